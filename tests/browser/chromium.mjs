// What the browser drivers share: their command-line options, and Debian's Chromium
// started headless through puppeteer-core (no browser download) in a fresh profile.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

/** The value after `--name` on the command line, if any. */
export function arg(name) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

/**
 * Starts Chromium in a new profile named after `prefix`, with `options` added to
 * puppeteer's. Returns the browser and `close()`, which also removes the profile.
 */
export async function launchChromium(prefix, options = {}) {
  const profile = mkdtempSync(join(tmpdir(), `${prefix}-chromium-`));
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    userDataDir: profile,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
      '--disable-dev-shm-usage',
    ],
    ...options,
  });
  const close = async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { browser, close };
}
