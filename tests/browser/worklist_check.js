// Looks at the node's worklist page in headless Chromium and prints what it saw as one JSON line.
// Usage: node worklist_check.js BASE_URL USER PASSWORD FLAGGED_STUDY_UID PLAIN_STUDY_UID OUT_DIR
"use strict";
const { chromium } = require("playwright-core");
const path = require("path");
const fs = require("fs");

const [base, user, password, flaggedUid, plainUid, outDir] = process.argv.slice(2);

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(outDir, "profile-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM_BIN,
    args: JSON.parse(process.env.CHROMIUM_ARGS),
    headless: true,
    viewport: { width: 1400, height: 900 },
  });
  const seen = {};
  try {
    // 1. No credentials: refused, and nothing of the worklist is in what came back.
    const anonymous = await context.newPage();
    anonymous.setDefaultTimeout(20000);
    // Chromium answers a Basic challenge it has no credentials for by failing the navigation.
    try {
      const refused = await anonymous.goto(`${base}/worklist`);
      seen.anonymous_status = refused.status();
    } catch (err) {
      seen.anonymous_error = String(err.message).split("\n")[0];
    }
    // What the server said, as the browser context's own request layer sees it.
    const direct = await context.request.get(`${base}/worklist`);
    seen.anonymous_status_seen = direct.status();
    seen.anonymous_body_has_study = (await direct.text()).includes(flaggedUid);
    await anonymous.close();
    seen.anonymous_api_status = (await context.request.get(`${base}/api/studies`)).status();
  } finally {
    await context.close();
  }

  // 2. With the operator's Basic credentials (a fresh context: Basic credentials are per context).
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_BIN,
    args: JSON.parse(process.env.CHROMIUM_ARGS),
    headless: true,
  });
  try {
    const ctx = await browser.newContext({
      httpCredentials: { username: user, password: password },
      viewport: { width: 1400, height: 900 },
    });
    const page = await ctx.newPage();
    page.setDefaultTimeout(20000);
    const ok = await page.goto(`${base}/worklist`);
    seen.status = ok.status();
    await page.waitForSelector(`tr[data-study-uid="${flaggedUid}"]`, { timeout: 20000 });
    await page.waitForSelector(`tr[data-study-uid="${plainUid}"]`, { timeout: 20000 });
    const rowInfo = async (uid) => {
      const row = page.locator(`tr[data-study-uid="${uid}"]`);
      return {
        flag: await row.locator(".flag").count() ? await row.locator(".flag").innerText() : null,
        status: await row.getAttribute("data-status"),
        nodules: await row.locator(".nodules").innerText(),
        probability: await row.locator(".probability").innerText(),
        viewer_href: await row.locator("a.viewer-link").getAttribute("href"),
        patient: await row.locator(".patient").innerText(),
        rerun_visible: await row.locator("button.rerun").isVisible(),
        waiting: await row.locator(".waiting").count() ? await row.locator(".waiting").innerText() : null,
      };
    };
    seen.flagged = await rowInfo(flaggedUid);
    seen.plain = await rowInfo(plainUid);
    seen.order = await page.locator("tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.studyUid));
    await page.screenshot({ path: path.join(outDir, "worklist.png"), fullPage: true });

    // 3. The "priority only" filter leaves the flagged study alone.
    await page.check("#filter-flagged");
    await page.waitForFunction(
      (uid) => {
        const rows = [...document.querySelectorAll("tbody tr")];
        return rows.length > 0 && rows.every((r) => r.classList.contains("flagged")) && !!document.querySelector(`tr[data-study-uid="${uid}"]`);
      },
      flaggedUid,
      { timeout: 20000 },
    );
    seen.filtered = await page.locator("tbody tr").evaluateAll((rows) => rows.map((r) => r.dataset.studyUid));
    await page.screenshot({ path: path.join(outDir, "worklist-priority-only.png"), fullPage: true });

    // 4. Re-run from the page (operator): the action is accepted.
    await page.uncheck("#filter-flagged");
    await page.waitForSelector(`tr[data-study-uid="${plainUid}"]`, { timeout: 20000 });
    await page.locator(`tr[data-study-uid="${plainUid}"] button.rerun`).click();
    await page.waitForFunction(() => /Re-run: (accepted|refused)/.test(document.getElementById("message").textContent), null, { timeout: 20000 });
    seen.rerun_message = await page.locator("#message").innerText();
    await ctx.close();
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(seen) + "\n");
}

main().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
