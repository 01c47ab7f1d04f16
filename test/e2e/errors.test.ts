import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { cacheDir, guestPids, type Instance, killStrays, newInstance, repoRoot, VM_ONLY } from './harness.js';

/**
 * Errors a user will hit. Each must give a clear message, a non-zero exit code, and leave no
 * half-started VM behind.
 */
describe('errors', { timeout: 900_000 }, () => {
  const instances: Instance[] = [];
  const inst = (name: string, env: NodeJS.ProcessEnv = {}) => {
    const i = newInstance(name, env);
    instances.push(i);
    return i;
  };
  after(async () => {
    for (const i of instances) {
      killStrays(i.home);
      fs.rmSync(i.home, { recursive: true, force: true });
    }
  });

  test('a broken settings file: clear message, file untouched, nothing started', async () => {
    const b = inst('settings');
    fs.writeFileSync(path.join(b.home, 'settings.json'), '{"cpus": 2,, }');
    const r = await b.berth(['start']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /settings\.json is not valid JSON/);
    assert.match(r.stderr, /the file was left as it is/);
    assert.equal(fs.readFileSync(path.join(b.home, 'settings.json'), 'utf8'), '{"cpus": 2,, }');
    assert.deepEqual(guestPids(b.home), []);
  });

  test('an invalid setting value names the key and the range', async () => {
    const b = inst('setting-value');
    const r = await b.berth(['settings', 'set', 'memoryMiB', '12']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /"memoryMiB" is 12; it must be an integer from 512/);
  });

  test('QEMU missing: says which package to install', { skip: VM_ONLY }, async () => {
    // A PATH with node and nothing else: no qemu-system-x86_64 to be found.
    const bin = fs.mkdtempSync('/tmp/berth-nobin-');
    fs.symlinkSync(process.execPath, path.join(bin, 'node'));
    const b = inst('noqemu', { PATH: bin });
    const r = await b.berth(['start']);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /QEMU is not installed/);
    assert.match(r.stderr, /apt-get install qemu-system-x86/);
  });

  test('a Docker socket path used by another engine is refused before booting', async () => {
    const b = inst('sockbusy');
    const sock = path.join(b.home, 'other-engine.sock');
    const other = net.createServer((c) => c.end());
    await new Promise<void>((r) => other.listen(sock, r));
    try {
      assert.equal((await b.berth(['settings', 'set', 'dockerSocket', sock])).code, 0);
      const r = await b.berth(['start']);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /already in use by another program/);
      assert.deepEqual(guestPids(b.home), []);
      assert.ok(fs.existsSync(sock), 'the other engine keeps its socket');
    } finally {
      other.close();
    }
  });

  test('an image build failure names the package and the step, and leaves no partial image', async () => {
    const guest = fs.mkdtempSync('/tmp/berth-guest-');
    fs.cpSync(path.join(repoRoot, 'guest'), guest, { recursive: true });
    const manifest = JSON.parse(fs.readFileSync(path.join(guest, 'manifest.json'), 'utf8'));
    manifest.base.packages.push('berth-no-such-package');
    fs.writeFileSync(path.join(guest, 'manifest.json'), JSON.stringify(manifest));
    const b = inst('badimage', { BERTH_GUEST_DIR: guest });
    // The image cache is shared: only partial images this test leaves count (another build may
    // run at the same time on a developer's machine).
    const images = path.join(cacheDir(), 'images');
    const partials = () => (fs.existsSync(images) ? fs.readdirSync(images).filter((d) => d.endsWith('.partial')) : []);
    const before = new Set(partials());
    const r = await b.berth(['image', 'build']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /step "resolve"/);
    assert.match(r.stderr, /berth-no-such-package/);
    const s = await b.berth(['start']);
    assert.equal(s.code, 1);
    assert.match(s.stderr, /berth-no-such-package/);
    assert.deepEqual(guestPids(b.home), []);
    assert.deepEqual(partials().filter((d) => !before.has(d)), []);
    fs.rmSync(guest, { recursive: true, force: true });
  });

  test('a VM that is not ready in time: timeout with the console tail, no VM left', async () => {
    const b = inst('timeout');
    assert.equal((await b.berth(['settings', 'set', 'startTimeoutSec', '10'])).code, 0);
    const r = await b.berth(['start']);
    if (r.code === 0) {
      // A host fast enough (KVM) to be ready in 10 s: nothing to check here.
      await b.berth(['stop']);
      return;
    }
    assert.equal(r.code, 1);
    assert.match(r.stderr, /did not .* within 10 s|not ready within/);
    assert.match(r.stderr, /last lines of console/);
    assert.deepEqual(guestPids(b.home), []);
    const st = JSON.parse((await b.berth(['status', '--json'])).stdout);
    assert.equal(st.state, 'failed');
  });
});
