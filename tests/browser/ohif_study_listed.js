// Opens one study in OHIF (headless Chromium via playwright-core) and checks the viewer shows it: the series
// of the given modalities listed in the study browser, and the first viewport drawn. Lighter than
// ohif_smoke.js (which also opens the SEG and the SR): the Docker test checks the OHIF container serves it.
// Usage: node ohif_study_listed.js BASE_URL STUDY_UID OUT_DIR MODALITY...
// Prints one JSON line (the report) on stdout; exit code 0 even on failure (the Python test reads the report).
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

const [baseUrl, studyUid, outDir, ...modalities] = process.argv.slice(2);
const DEADLINE_MS = 240000; // OHIF on swiftshader is slow
const report = { ok: false, consoleErrors: [], pageErrors: [] };

// True once the viewport canvas holds a drawn image (some non-black pixels).
function canvasDrawn() {
  const c = document.querySelector('canvas.cornerstone-canvas') || document.querySelector('canvas');
  if (!c || !c.width) return false;
  const ctx = c.getContext('2d');
  if (!ctx) return false;
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let sum = 0;
  for (let i = 0; i < d.length; i += 97) sum += d[i];
  return sum > 1000;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN,
    args: JSON.parse(process.env.CHROMIUM_ARGS),
    headless: true,
  });
  let page;
  try {
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.on('console', msg => {
      if (msg.type() === 'error') report.consoleErrors.push(msg.text().slice(0, 300));
    });
    page.on('pageerror', err => report.pageErrors.push(String(err).slice(0, 300)));
    page.setDefaultTimeout(DEADLINE_MS);
    for (const label of ['Skip all', 'Confirm and hide']) {
      await page.addLocatorHandler(page.getByText(label, { exact: true }), async overlay => overlay.click());
    }
    await page.goto(`${baseUrl}/viewer?StudyInstanceUIDs=${studyUid}`, { waitUntil: 'domcontentloaded' });
    for (const modality of modalities) {
      await page.locator('[data-cy="series-modality-label"]', { hasText: new RegExp(`^${modality}$`) }).first().waitFor();
    }
    report.modalities = await page.locator('[data-cy="series-modality-label"]').allInnerTexts();
    report.descriptions = await page.locator('[data-cy="series-description-label"]').allInnerTexts();
    await page.waitForFunction(canvasDrawn, null, { timeout: DEADLINE_MS, polling: 1000 });
    await page.waitForTimeout(2000);
    report.screenshot = path.join(outDir, 'viewer.png');
    await page.screenshot({ path: report.screenshot });
    report.ok = true;
  } catch (err) {
    report.error = String(err).slice(0, 1000);
    if (page) {
      try {
        report.failureText = (await page.locator('body').innerText()).slice(0, 3000);
        await page.screenshot({ path: path.join(outDir, 'failure.png') });
      } catch (_) {}
    }
  } finally {
    await browser.close();
    console.log(JSON.stringify(report));
  }
})();
