// Cross-origin uploads in Debian's headless Chromium (puppeteer-core, no browser download):
// cross_origin.html, served from an origin other than the upload server's, uploads to it.
// Run by tests/api/cross_origin.rs.
//
//   node cross_origin.mjs --file PATH --steps JSON [--cookies JSON] [--timeout SECS]
//
// --cookies: puppeteer cookie objects ({ url, name, value }) set before the first page.
// --steps: a list of { page, kind: "tus" | "draft", endpoint, headers, meta, chunkSize,
// credentials }:
// each loads `page` (once per distinct URL), puts PATH in its file input, and awaits
// window.xo[kind](step). Prints one JSON line: { ok, results (one per step), console
// (every console message, by page), errors }. `ok` says the driver itself ran; what the
// uploads did is for the Rust test to judge.

import { arg, launchChromium } from './chromium.mjs';

const file = arg('file');
const steps = JSON.parse(arg('steps') || 'null');
const cookies = JSON.parse(arg('cookies') || '[]');
const timeoutMs = Number(arg('timeout') || 60) * 1000;
if (!file || !Array.isArray(steps)) {
  console.error('usage: node cross_origin.mjs --file PATH --steps JSON [--timeout SECS]');
  process.exit(2);
}

const { browser, close } = await launchChromium('cross-origin', { protocolTimeout: timeoutMs });

const report = { ok: false, results: [], console: [], errors: [] };
try {
  const pages = new Map();
  const open = async (url) => {
    if (pages.has(url)) return pages.get(url);
    const page = await browser.newPage();
    if (cookies.length && pages.size === 0) await page.setCookie(...cookies);
    page.on('pageerror', (e) => report.errors.push(`${url}: ${e && e.message ? e.message : e}`));
    page.on('console', (m) => report.console.push({ page: url, type: m.type(), text: m.text() }));
    await page.goto(url, { waitUntil: 'load', timeout: 30000 });
    await page.waitForFunction(() => window.xo && window.Uppy, { timeout: 10000 });
    const input = await page.$('#file');
    await input.uploadFile(file);
    pages.set(url, page);
    return page;
  };
  for (const step of steps) {
    const page = await open(step.page);
    const result = await Promise.race([
      page.evaluate((s) => window.xo[s.kind](s), step),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`step timed out: ${JSON.stringify(step)}`)), timeoutMs)),
    ]);
    report.results.push(result);
  }
  report.ok = true;
} catch (e) {
  report.errors.push(`driver: ${e && e.stack ? e.stack : e}`);
} finally {
  await close();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
