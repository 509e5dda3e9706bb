// Opens one study in OHIF (headless Chromium via playwright-core) and reports what it sees as JSON.
// Usage: node ohif_smoke.js BASE_URL STUDY_UID OUT_DIR
// Prints one JSON line {"ok": bool, "steps": [...], "seriesText": ..., ...}; screenshots go to OUT_DIR.
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

const [baseUrl, studyUid, outDir] = process.argv.slice(2);
const DEADLINE_MS = 240000; // OHIF on swiftshader is slow; poll against this, never sleep blindly
const report = { ok: false, steps: [], consoleErrors: [], pageErrors: [] };

function step(name, extra = {}) {
  report.steps.push({ name, t: Date.now(), ...extra });
}

async function shot(page, name) {
  const file = path.join(outDir, name);
  await page.screenshot({ path: file });
  report.screenshots = [...(report.screenshots || []), file];
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN,
    args: JSON.parse(process.env.CHROMIUM_ARGS),
    headless: true,
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('console', msg => {
      if (msg.type() === 'error') report.consoleErrors.push(msg.text().slice(0, 300));
    });
    page.on('pageerror', err => report.pageErrors.push(String(err).slice(0, 300)));
    page.setDefaultTimeout(DEADLINE_MS);

    await page.goto(`${baseUrl}/viewer?StudyInstanceUIDs=${studyUid}`, { waitUntil: 'domcontentloaded' });
    step('opened viewer');

    // The study browser lists one thumbnail per series; wait until the SEG and SR ones are there.
    const thumbs = page.locator('[data-cy="study-browser-thumbnail"], [data-cy^="study-browser-thumbnail"]');
    await page.waitForFunction(
      () => {
        const text = document.body.innerText || '';
        return text.includes('SEG') && text.includes('SR');
      },
      null,
      { timeout: DEADLINE_MS, polling: 500 },
    );
    step('series listed', { thumbnails: await thumbs.count() });
    report.seriesText = (await page.locator('body').innerText()).slice(0, 4000);
    await shot(page, '01-study-loaded.png');
    report.dataCy = await page.evaluate(() =>
      [...document.querySelectorAll('[data-cy]')].map(e => e.getAttribute('data-cy') + '|' + (e.innerText || '').slice(0, 40).replace(/\n/g, ' ')).slice(0, 80));
    for (const label of ['Skip all', 'Confirm and hide']) {
      const b = page.getByText(label, { exact: true });
      if (await b.count()) { await b.first().click(); step('clicked ' + label); }
    }
    // Wait for the CT to be drawn in the viewport: some non-black pixel on the cornerstone canvas.
    await page.waitForFunction(() => {
      const c = document.querySelector('canvas.cornerstone-canvas') || document.querySelector('.cornerstone-viewport-element canvas') || document.querySelector('canvas');
      if (!c || !c.width) return false;
      const ctx = c.getContext('2d');
      if (!ctx) return false;
      const d = ctx.getImageData(0, 0, c.width, c.height).data;
      let s = 0;
      for (let i = 0; i < d.length; i += 97) s += d[i];
      return s > 1000;
    }, null, { timeout: DEADLINE_MS, polling: 1000 });
    step('ct rendered');
    await shot(page, '02-ct-rendered.png');
    const seg = page.locator('[data-cy="study-browser-thumbnail-no-image"]').filter({ hasText: 'SEG' });
    report.segItems = await seg.count();
    await seg.first().dblclick();
    step('seg double-clicked');
    await page.getByText('Do you want to open this Segmentation?').waitFor({ timeout: DEADLINE_MS });
    await shot(page, '03-seg-preview.png');
    await page.getByRole('button', { name: 'Yes', exact: true }).click();
    step('seg load confirmed');
    const panelButton = page.locator('[data-cy="panelSegmentation-btn"]');
    if (await panelButton.count()) await panelButton.first().click();
    await page.waitForFunction(() => (document.body.innerText || '').includes('Nodule 2'), null, { timeout: DEADLINE_MS, polling: 500 });
    step('segments listed');
    await page.waitForTimeout(3000);
    await shot(page, '04-seg-loaded.png');
    report.afterSeg = (await page.locator('body').innerText()).slice(0, 3000);
    const sr = page.locator('[data-cy="study-browser-thumbnail-no-image"]').filter({ hasText: 'SR' });
    await sr.first().dblclick();
    step('sr double-clicked');
    await page.waitForTimeout(15000);
    await shot(page, '05-sr.png');
    report.afterSr = (await page.locator('body').innerText()).slice(0, 3000);
    report.ok = true;
  } catch (err) {
    report.error = String(err).slice(0, 1000);
    try {
      const pages = browser.contexts()[0]?.pages() || [];
      if (pages[0]) await pages[0].screenshot({ path: path.join(outDir, 'failure.png') });
    } catch (_) {}
  } finally {
    await browser.close();
    console.log(JSON.stringify(report));
  }
})();
