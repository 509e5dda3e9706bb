// The worklist over HTTPS in headless Chromium, the test CA trusted through an NSS database (as a site's
// browsers trust its CA), not by ignoring certificate errors. Prints what it saw as one JSON line.
// Usage: node https_check.js BASE_URL TOKEN STUDY_UID OUT_DIR TRUSTING_HOME BARE_HOME
// TRUSTING_HOME/.pki/nssdb trusts the test CA; BARE_HOME/.pki/nssdb is empty (the CA unknown there).
"use strict";
const { chromium } = require("playwright-core");
const path = require("path");
const fs = require("fs");

const [base, token, studyUid, outDir, trustingHome, bareHome] = process.argv.slice(2);

function launch(home) {
  // Chromium on Linux reads user trust anchors from $HOME/.pki/nssdb.
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN,
    args: JSON.parse(process.env.CHROMIUM_ARGS),
    headless: true,
    env: { ...process.env, HOME: home },
  });
}

async function main() {
  fs.mkdirSync(outDir, { recursive: true });
  const seen = {};

  // 1. A browser that does not know the CA refuses the node's certificate.
  const bare = await launch(bareHome);
  try {
    const page = await (await bare.newContext()).newPage();
    try {
      const r = await page.goto(`${base}/worklist`, { timeout: 20000 });
      seen.untrusted_status = r.status();
    } catch (err) {
      seen.untrusted_error = String(err.message).split("\n")[0];
    }
  } finally {
    await bare.close();
  }

  // 2. One that trusts it: the login form, then the worklist with its viewer link, all over https.
  const browser = await launch(trustingHome);
  try {
    const ctx = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    const page = await ctx.newPage();
    page.setDefaultTimeout(20000);
    const first = await page.goto(`${base}/worklist`);
    seen.login_status = first.status();
    seen.hsts = first.headers()["strict-transport-security"] || null;
    seen.login_form = (await page.locator('input[name="token"]').count()) === 1;
    seen.security = await first.securityDetails();
    await page.fill('input[name="token"]', token);
    const [after] = await Promise.all([
      page.waitForNavigation(),
      page.click('button[type="submit"]'),
    ]);
    seen.worklist_status = after.status();
    seen.protocol = await page.evaluate(() => location.protocol);
    await page.waitForSelector(`tr[data-study-uid="${studyUid}"]`);
    seen.viewer_href = await page.locator(`tr[data-study-uid="${studyUid}"] a.viewer-link`).getAttribute("href");
    const cookie = (await ctx.cookies()).find((c) => c.name === "ainode_session");
    seen.cookie_secure = cookie ? cookie.secure : null;
    seen.cookie_http_only = cookie ? cookie.httpOnly : null;
    await page.screenshot({ path: path.join(outDir, "worklist-https.png"), fullPage: true });
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
