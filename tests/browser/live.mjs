// Loads the dashboard in headless Chromium, checks it hydrates and shows the view's
// rows, posts events, and checks the table changes without a page reload.
// Usage: node live.mjs BASE_URL SCREENSHOT_DIR
import { chromium } from 'playwright-core';

const [base, shots] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const fail = async (msg) => {
  console.error(`FAIL: ${msg}`);
  await browser.close();
  process.exit(1);
};
try {
  const page = await browser.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  let navigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations += 1; });

  await page.goto(`${base}/`, { waitUntil: 'load' });
  const before = Number(await page.textContent('#row-count'));
  // Hydration opens the live stream; the status says so.
  await page.waitForFunction(() => document.querySelector('#live-status')?.textContent === 'live',
    null, { timeout: 15000 }).catch(() => fail('the page never went live'));
  const heading = await page.textContent('section.view h2');
  if (heading !== 'signal_by_type') await fail(`unexpected view heading ${heading}`);

  // Three readings in a window nobody else writes to: one new row appears.
  const events = [70, 80, 90].map((signal, i) => ({
    device: `browser-${i}`, device_type: 'browser-test', signal, ts: '2030-01-01T00:05:00Z',
  }));
  const posted = await fetch(`${base}/api/v1/streams/readings/events`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(events),
  });
  if (posted.status !== 200) await fail(`ingest answered ${posted.status}`);
  const t0 = Date.now();
  await page.waitForSelector('tr:has(td:text-is("browser-test"))', { timeout: 5000 })
    .catch(() => fail('the new row did not appear'));
  const elapsed = Date.now() - t0;
  const row = await page.$$eval('tr:has(td:text-is("browser-test")) td', (tds) => tds.map((t) => t.textContent));
  // window, device_type, avg, max, count, _source
  if (row[2] !== '80' || row[3] !== '90' || row[4] !== '3' || row[5] !== 'speed') {
    await fail(`row values ${JSON.stringify(row)}`);
  }
  const after = Number(await page.textContent('#row-count'));
  if (after !== before + 1) await fail(`row count went from ${before} to ${after}`);
  if (navigations !== 1) await fail(`the page navigated ${navigations} times (reloaded?)`);
  if (problems.length) await fail(`browser errors: ${problems.join(' | ')}`);
  if (shots) await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
  console.log(`OK: row appeared ${elapsed} ms after the POST, without a reload`);
} catch (e) {
  await fail(String(e));
}
await browser.close();
