// The dashboard when the server goes away and comes back: the test harness stops the
// server after this script prints LIVE and starts it again after OFFLINE. The page must
// say the server is unreachable (banner, header status) and recover by itself.
// Usage: node offline.mjs BASE_URL SCREENSHOT_DIR
import { chromium } from 'playwright-core';

const [base, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run'],
});
const fail = async (msg) => {
  console.log(`FAIL: ${msg}`);
  await browser.close();
  process.exit(1);
};
const conn = () => document.querySelector('#conn')?.textContent;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(`${base}/views/signal_by_type`, { waitUntil: 'load' });
  await page.waitForFunction((c) => eval(c)() === 'live', `(${conn})`, { timeout: 15000 })
    .catch(() => fail('the page never went live'));
  console.log('LIVE');
  await page.waitForSelector('#conn-banner', { timeout: 20000 }).catch(() => fail('no banner once the server was gone'));
  if ((await page.textContent('#conn')) !== 'offline') await fail('the header does not say offline');
  const rows = await page.$$eval('#view-rows tbody tr', (trs) => trs.length);
  if (rows === 0) await fail('the last data received is no longer shown');
  if (shots) await page.screenshot({ path: `${shots}/unreachable.png`, fullPage: false });
  console.log('OFFLINE');
  await page.waitForFunction(() => !document.querySelector('#conn-banner') && document.querySelector('#conn')?.textContent === 'live',
    null, { timeout: 30000 }).catch(() => fail('the page did not recover when the server came back'));
  console.log('BACK');
} catch (e) {
  await fail(String(e));
}
await browser.close();
