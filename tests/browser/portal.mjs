// The portal in a real browser: Debian's chromium, driven by playwright-core, at a phone and
// a desktop viewport — the guest path, and a customer's (sign in → My tickets → a new ticket
// → reply). Every page is checked with axe-core (no serious or critical
// violations) and saved as a screenshot. Run by tests/tests/browser.rs, which starts the
// ticket service, the email dispatcher, the OpenID Connect provider double and the portal and
// passes their addresses:
//   PORTAL_URL, MAILDEV_URL, SCREENSHOTS (a directory), RUN_ID (makes the addresses unique).
import { readFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const AXE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const PORTAL = process.env.PORTAL_URL;
const MAILDEV = process.env.MAILDEV_URL;
const SHOTS = process.env.SCREENSHOTS;
const RUN = process.env.RUN_ID;
if (!PORTAL || !MAILDEV || !SHOTS || !RUN) throw new Error('PORTAL_URL, MAILDEV_URL, SCREENSHOTS and RUN_ID are required');
mkdirSync(SHOTS, { recursive: true });

const VIEWPORTS = {
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 },
  desktop: { viewport: { width: 1280, height: 800 } },
};

// Polls `check` until it returns something, for at most `ms`.
async function eventually(what, ms, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const got = await check();
    if (got) return got;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function mailTo(address, subjectStart) {
  return eventually(`mail "${subjectStart}" to ${address}`, 30_000, async () => {
    const all = await (await fetch(`${MAILDEV}/api/email`)).json();
    return all.find((m) => m.to.some((t) => t.address === address) && m.subject.startsWith(subjectStart));
  });
}

// axe-core on the page as it is: serious and critical violations fail the run.
async function audit(page, name) {
  await page.addScriptTag({ content: AXE });
  const result = await page.evaluate(async () => await globalThis.axe.run(document));
  const bad = result.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (bad.length) {
    const lines = bad.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
    throw new Error(`axe on ${name}:\n  ${lines.join('\n  ')}`);
  }
  console.log(`axe ok: ${name} (${result.passes.length} rules passed)`);
}

async function step(page, label, name) {
  await audit(page, `${label}/${name}`);
  await page.screenshot({ path: `${SHOTS}/portal-${label}-${name}.png`, fullPage: true });
}

async function expectText(page, text) {
  await page.getByText(text, { exact: false }).first().waitFor({ timeout: 10_000 });
}

async function guestPath(browser, label) {
  // A fresh context is a fresh profile: its own cookies, nothing shared between viewports.
  // bypassCSP lets the audit inject axe; the pages themselves run under their CSP.
  const context = await browser.newContext({ ...VIEWPORTS[label], locale: 'en-GB', bypassCSP: true });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const email = `browser-${label}-${RUN}@example.org`;

  await page.goto(PORTAL);
  await step(page, label, '1-home');
  await page.getByRole('link', { name: 'Submit a request' }).click();
  await step(page, label, '2-new-request');
  await page.getByLabel('Subject').fill('Withdrawal stuck');
  await page.getByLabel('Description').fill('My withdrawal is pending.\nTransaction 0xabc at 10:42.');
  await page.getByLabel('Your email address').fill(email);
  await page.getByRole('button', { name: 'Submit a request' }).click();
  await expectText(page, 'Check your email');
  await step(page, label, '3-check-email');

  // The link in the confirmation mail, as the guest would click it.
  const first = await mailTo(email, 'We received your support request');
  const link = first.text.match(/https?:\/\/\S+/)[0];
  await page.goto(link);
  if (page.url().includes('link=')) throw new Error(`the token stayed in the address: ${page.url()}`);
  await expectText(page, 'Verify your email');
  await step(page, label, '4-verify');
  await page.getByRole('button', { name: 'Send code' }).click();
  await expectText(page, 'We sent a 6-digit code');
  await step(page, label, '5-code-form');
  const codeMail = await mailTo(email, 'Your verification code');
  const code = codeMail.text.match(/\b\d{6}\b/)[0];
  await page.getByLabel('6-digit code').fill(code);
  await page.getByRole('button', { name: 'Verify' }).click();
  await expectText(page, 'Withdrawal stuck');
  await expectText(page, 'Transaction 0xabc at 10:42.');
  await step(page, label, '6-ticket');

  await page.getByLabel('Your reply').fill('Here is the transaction id: 0xabc.\nThank you!');
  await page.getByRole('button', { name: 'Send' }).click();
  await expectText(page, 'Here is the transaction id: 0xabc.');
  await step(page, label, '7-replied');
  // Keyboard: on a freshly loaded page the first Tab reaches the skip link.
  await page.goto(page.url().split('#')[0]);
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement?.textContent?.trim());
  if (focused !== 'Skip to content') throw new Error(`first Tab focused ${JSON.stringify(focused)}`);
  if (errors.length) throw new Error(`script errors: ${errors.join('; ')}`);
  await context.close();
  console.log(`guest path ok at the ${label} viewport`);
}

async function signedInPath(browser, label) {
  const context = await browser.newContext({ ...VIEWPORTS[label], locale: 'en-GB', bypassCSP: true });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  const sub = `browser-${label}-${RUN}`;

  await page.goto(PORTAL);
  await page.getByRole('link', { name: 'Sign in' }).click();
  // The identity provider's own page (the double): not ours, so not audited.
  await page.getByLabel('Account id').fill(sub);
  await page.getByLabel('Email').fill(`${sub}@example.org`);
  await page.getByLabel('Name').fill('Ann');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expectText(page, 'My tickets');
  await expectText(page, 'You have no tickets yet.');
  await step(page, label, '8-my-tickets-empty');
  await page.getByRole('link', { name: 'New ticket' }).click();
  await step(page, label, '9-new-ticket');
  await page.getByLabel('Subject').fill('Card declined');
  await page.getByLabel('Description').fill('My card was declined twice today.');
  await page.getByRole('button', { name: 'Send' }).click();
  await expectText(page, 'My card was declined twice today.');
  await page.getByLabel('Your reply').fill('It is the Visa ending 4242.');
  await page.getByRole('button', { name: 'Send' }).click();
  await expectText(page, 'It is the Visa ending 4242.');
  await step(page, label, '10-customer-ticket');
  await page.goto(`${PORTAL}/tickets`);
  await page.getByRole('link', { name: 'Card declined' }).waitFor({ timeout: 10_000 });
  await expectText(page, 'Open');
  await step(page, label, '11-my-tickets');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('link', { name: 'Sign in' }).waitFor({ timeout: 10_000 });
  if (errors.length) throw new Error(`script errors: ${errors.join('; ')}`);
  await context.close();
  console.log(`signed-in path ok at the ${label} viewport`);
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
try {
  for (const label of Object.keys(VIEWPORTS)) {
    await guestPath(browser, label);
    await signedInPath(browser, label);
  }
} finally {
  await browser.close();
}
