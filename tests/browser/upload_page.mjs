// Drives /upload in Debian's headless Chromium with puppeteer-core (no browser download).
// Run by tests/api/upload_page.rs; installed by .ci/run (npm ci in tests/browser).
//
//   node upload_page.mjs --url URL [--token JWT --expect-listed N]
//                        [--file PATH] [--screenshot PNG] [--timeout SECS]
//
// Without --file: loads the page and checks that Uppy's Dashboard renders under the page's
// CSP, with no script error, no CSP report and no request leaving the page's origin.
// With --file: also adds the file in the Dashboard, presses Upload (tus, Uppy's defaults),
// waits until the page lists it, and takes a screenshot. Prints one JSON line with what it
// saw; exits 0 when every check held, 1 otherwise.
// With --token: pastes the token into the page's form and waits until it lists at least N
// of the user's files (GET /v1/files/all), before any upload.

import { arg, launchChromium } from './chromium.mjs';

const url = arg('url');
const file = arg('file');
const screenshot = arg('screenshot');
const timeoutMs = Number(arg('timeout') || 180) * 1000;
const token = arg('token');
const expectListed = Number(arg('expect-listed') || 0);
if (!url) {
  console.error('usage: node upload_page.mjs --url URL [--file PATH --screenshot PNG]');
  process.exit(2);
}
const origin = new URL(url).origin;

const { browser, close } = await launchChromium('upload-page');

const seen = { errors: [], csp: [], external: [], failed: [], files: [], uploads: null };
let ok = false;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1100, height: 900 });
  page.on('pageerror', (e) => seen.errors.push(String(e && e.message ? e.message : e)));
  page.on('console', (m) => {
    const text = m.text();
    if (/Content Security Policy/i.test(text)) seen.csp.push(text);
    // A failed request is reported (with its URL) by the response handler below.
    else if (m.type() === 'error' && !/^Failed to load resource/.test(text)) seen.errors.push(text);
  });
  page.on('request', (r) => {
    const u = r.url();
    if (!(u.startsWith(origin) || u.startsWith('data:') || u.startsWith('blob:'))) {
      seen.external.push(u);
    }
  });
  page.on('response', (r) => {
    if (r.status() >= 400) seen.errors.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`);
  });
  page.on('requestfailed', (r) => seen.failed.push(`${r.url()}: ${r.failure()?.errorText}`));

  await page.goto(url, { waitUntil: 'load', timeout: 60000 });
  await page.waitForSelector('.uppy-Dashboard-input', { timeout: 30000 });
  seen.grantInfo = await page.$eval('#grant-info', (e) => (e.hidden ? null : e.textContent));

  const listedFiles = () => page.$$eval('#files li', (lis) => lis.map((li) => ({
    text: li.textContent,
    key: li.dataset.key || null,
    url: li.dataset.url || null,
  })));
  if (token) {
    await page.type('#token', token);
    await page.click('#token-form button[type=submit]');
    await page.waitForFunction(
      (n) => Number(document.getElementById('files').dataset.count) >= n,
      { timeout: 30000, polling: 100 },
      expectListed,
    );
    seen.listed = await listedFiles();
    seen.tokenStored = await page.evaluate(
      () => window.sessionStorage.getItem('upload-server.token') !== null,
    );
    seen.tokenFieldCleared = await page.$eval('#token', (e) => e.value === '');
  }
  if (file) {
    const input = await page.$('.uppy-Dashboard-input');
    await input.uploadFile(file);
    await page.waitForSelector('.uppy-StatusBar-actionBtn--upload', { timeout: 30000 });
    await page.click('.uppy-StatusBar-actionBtn--upload');
    await page.waitForFunction(
      () => document.body.dataset.uploads !== undefined,
      { timeout: timeoutMs, polling: 200 },
    );
    seen.uploads = await page.evaluate(() => Number(document.body.dataset.uploads));
    seen.files = await listedFiles();
    seen.message = await page.$eval('#message', (e) => e.textContent);
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  ok = seen.errors.length === 0 && seen.csp.length === 0 && seen.external.length === 0 &&
    (!file || (seen.uploads === 1 && seen.files.length >= 1)) &&
    (!token || seen.listed.length >= expectListed);
} catch (e) {
  seen.errors.push(`driver: ${e && e.stack ? e.stack : e}`);
} finally {
  await close();
}
console.log(JSON.stringify({ ok, ...seen }));
process.exit(ok ? 0 : 1);
