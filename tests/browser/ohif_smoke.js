// Opens one study in OHIF (headless Chromium via playwright-core) and checks what a radiologist would see:
// the SEG and SR series listed, the CT drawn, the SEG loaded with its segments, the SR opened.
// Usage: node ohif_smoke.js BASE_URL STUDY_UID OUT_DIR
// Prints one JSON line (the report) on stdout; screenshots go to OUT_DIR. Exit code 0 even on failure:
// the Python test reads the report and fails with its details.
'use strict';
const { chromium } = require('playwright-core');
const path = require('path');

const [baseUrl, studyUid, outDir] = process.argv.slice(2);
const DEADLINE_MS = 240000; // OHIF on swiftshader is slow: every wait polls against this deadline
const SETTLE_MS = 3000; // let a just-loaded viewport paint before its screenshot
const report = { ok: false, steps: [], consoleErrors: [], pageErrors: [], screenshots: [] };

function step(name, extra = {}) {
  report.steps.push({ name, t: Date.now(), ...extra });
}

async function shot(page, name) {
  const file = path.join(outDir, name);
  await page.screenshot({ path: file });
  report.screenshots.push(file);
}

const bodyText = page => page.locator('body').innerText();

async function waitForText(page, texts) {
  await page.waitForFunction(
    wanted => wanted.every(t => (document.body.innerText || '').includes(t)),
    texts,
    { timeout: DEADLINE_MS, polling: 500 },
  );
}

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

// The first-visit tour and the investigational-use banner may cover the viewport at any moment:
// playwright dismisses them whenever they get in the way of an action or a wait.
async function dismissOverlaysWhenTheyAppear(page) {
  for (const label of ['Skip all', 'Confirm and hide']) {
    await page.addLocatorHandler(page.getByText(label, { exact: true }), async overlay => {
      await overlay.click();
      step(`dismissed ${label}`);
    });
  }
}

function seriesItem(page, modality) {
  return page
    .locator('[data-cy^="study-browser-thumbnail"]')
    .filter({ has: page.locator('[data-cy="series-modality-label"]', { hasText: new RegExp(`^${modality}$`) }) });
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
      const text = msg.text();
      // OHIF logs its React error boundary at debug level: watch every level for it.
      if (msg.type() === 'error' || /Error Boundary|Something went wrong/.test(text)) {
        report.consoleErrors.push(`${msg.type()}: ${text.slice(0, 300)}`);
      }
    });
    page.on('pageerror', err => report.pageErrors.push(String(err).slice(0, 300)));
    page.setDefaultTimeout(DEADLINE_MS);
    await dismissOverlaysWhenTheyAppear(page);

    await page.goto(`${baseUrl}/viewer?StudyInstanceUIDs=${studyUid}`, { waitUntil: 'domcontentloaded' });
    step('opened viewer');

    // 1. The study browser lists the node's series next to the CT.
    for (const modality of ['CT', 'SEG', 'SR', 'OT']) {
      await page.locator('[data-cy="series-modality-label"]', { hasText: new RegExp(`^${modality}$`) }).first().waitFor();
    }
    report.modalities = await page.locator('[data-cy="series-modality-label"]').allInnerTexts();
    report.descriptions = await page.locator('[data-cy="series-description-label"]').allInnerTexts();
    step('series listed');

    // 2. The CT is drawn.
    await page.waitForFunction(canvasDrawn, null, { timeout: DEADLINE_MS, polling: 1000 });
    step('ct rendered');
    await shot(page, '01-study.png');

    // 3. Double-clicking the SEG asks to open it; after "Yes" the segments are listed by label.
    await seriesItem(page, 'SEG').first().dblclick();
    await waitForText(page, ['Do you want to open this Segmentation?']);
    step('seg preview');
    await page.waitForTimeout(SETTLE_MS);
    await shot(page, '02-seg-preview.png');
    await page.getByRole('button', { name: 'Yes', exact: true }).click();
    const segPanel = page.locator('[data-cy="panelSegmentation-btn"]');
    if (await segPanel.count()) await segPanel.first().click();
    await waitForText(page, ['Nodule 1', 'Nodule 2']);
    step('seg loaded');
    report.segmentPanelText = (await bodyText(page)).slice(0, 3000);
    await page.waitForTimeout(SETTLE_MS);
    await shot(page, '03-seg-loaded.png');

    // 4. Double-clicking the SR shows its measurements on the CT: the key image, each nodule's long
    //    axis labelled with its measurements (OHIF 3.12 draws SR annotations from the 2D SCOORD).
    await seriesItem(page, 'SR').first().dblclick();
    step('sr opened');
    await waitForText(page, ['Long axis:', 'Probability of cancer:']);
    await page.waitForFunction(canvasDrawn, null, { timeout: DEADLINE_MS, polling: 1000 });
    step('sr drawn');
    await page.waitForTimeout(SETTLE_MS);
    report.srText = (await bodyText(page)).slice(0, 3000);
    await shot(page, '04-sr.png');
    report.ok = true;
  } catch (err) {
    report.error = String(err).slice(0, 1000);
    if (page) {
      try {
        report.failureText = (await bodyText(page)).slice(0, 3000);
        await shot(page, 'failure.png');
      } catch (_) {}
    }
  } finally {
    await browser.close();
    console.log(JSON.stringify(report));
  }
})();
