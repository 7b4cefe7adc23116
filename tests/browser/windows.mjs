// The dashboard with a large view (the caller loads about 10,000 windows): every page
// becomes interactive, the view page charts every window of its keys and pages through
// its table. Prints how long each page took to become interactive (hydrated, live);
// the figures in the README come from this script against a release build.
// Usage: node windows.mjs BASE_URL [ROUNDS]
import { chromium } from 'playwright-core';

const [base, rounds = '1'] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run'],
});
const fail = async (msg) => {
  console.error(`FAIL: ${msg}`);
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const times = {};
  for (let round = 0; round < Number(rounds); round++) {
    for (const path of ['/', '/views/signal_by_type', '/batch', '/sql', '/streams/readings']) {
      const t0 = Date.now();
      await page.goto(`${base}${path}`, { waitUntil: 'load' });
      await page.waitForFunction(() => document.body.dataset.hydrated === 'true', null, { timeout: 30000 })
        .catch(() => fail(`${path} never hydrated`));
      (times[path] ||= []).push(Date.now() - t0);
    }
  }
  await page.goto(`${base}/views/signal_by_type`, { waitUntil: 'load' });
  await page.waitForFunction(() => document.body.dataset.hydrated === 'true', null, { timeout: 30000 });
  const total = Number(await page.textContent('#row-count'));
  const keys = await page.$$eval('#keys .chip.on', (cs) => cs.map((c) => c.dataset.key));
  const answer = await (await fetch(`${base}/api/v1/views/signal_by_type?limit=0`)).json();
  if (total !== answer.total_rows) await fail(`${total} windows on screen, ${answer.total_rows} in the API`);
  let charted = 0;
  for (const k of keys) {
    charted += (await (await fetch(`${base}/api/v1/views/signal_by_type?limit=0&device_type=${encodeURIComponent(k)}`)).json()).total_rows;
  }
  const points = Number(await page.getAttribute('#view-chart', 'data-points'));
  if (points !== charted) await fail(`the chart has ${points} points; the API has ${charted} windows for ${keys}`);
  const label = await page.textContent('#page-label');
  await page.click('#page-next');
  await page.waitForFunction((l) => document.querySelector('#page-label').textContent !== l, label);
  if (errors.length) await fail(errors.join(' | '));
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`OK: ${total} windows, ${points} charted for ${keys.length} keys`);
  for (const [p, xs] of Object.entries(times)) {
    console.log(`${p}: interactive after ${median(xs)} ms (median of ${xs.length}; max ${Math.max(...xs)} ms)`);
  }
} catch (e) {
  await fail(String(e));
}
await browser.close();
