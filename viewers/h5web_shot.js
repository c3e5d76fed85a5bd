// Screenshot a shard in h5web (jupyterlab-h5web) with Debian's Chromium, driven by playwright-core.
//
// usage: node h5web_shot.js URL FILE_NAME OUT_DIR TREE_ITEM... 
//   Opens JupyterLab at URL, double-clicks FILE_NAME in its file browser (h5web opens it on the
//   file's default: OUT_DIR/default.png), then clicks each TREE_ITEM in h5web's explorer in turn;
//   an item given as "name=shot" is screenshotted after its click to OUT_DIR/shot.png.
// Exits 1 with one line on the first step that fails.
const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
  // h5web draws with WebGL: no GPU here, so ANGLE's software renderer.
  '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
];
const STEP_TIMEOUT_MS = 30000;
const SETTLE_MS = 2500; // h5web fetches values and draws after the click

async function main() {
  const [url, fileName, outDir, ...items] = process.argv.slice(2);
  const userDataDir = require('fs').mkdtempSync(require('path').join(require('os').tmpdir(), 'h5web-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 900 },
  });
  try {
    const page = context.pages()[0] || await context.newPage();
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: STEP_TIMEOUT_MS });
    const file = page.locator('.jp-DirListing-itemText', { hasText: fileName }).first();
    await file.waitFor({ timeout: STEP_TIMEOUT_MS });
    // Opening h5web by URL does not work in JupyterLab 4; a double click in the file browser does.
    await file.dblclick();
    await page.getByRole('treeitem').first().waitFor({ timeout: STEP_TIMEOUT_MS });
    await page.waitForTimeout(2 * SETTLE_MS);
    await page.screenshot({ path: `${outDir}/default.png` });
    for (const item of items) {
      const [name, shot] = item.split('=');
      // An explorer entry's text is its name, then "NX" for NeXus groups.
      const node = page.getByRole('treeitem').filter({ hasText: new RegExp(`^\\s*${name}\\s*(NX)?\\s*$`) }).first();
      await node.click({ timeout: STEP_TIMEOUT_MS });
      await page.waitForTimeout(SETTLE_MS);
      if (shot) await page.screenshot({ path: `${outDir}/${shot}.png` });
    }
  } finally {
    await context.close();
    require('fs').rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`h5web: ${err.message.split('\n')[0]}`);
  process.exit(1);
});
