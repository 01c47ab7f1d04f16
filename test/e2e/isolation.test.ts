import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { busyboxRootfsTar, daemonPid, dockerCli, E2E_BACKEND, newInstance, guestPids, sleep, VM_ONLY, type Instance } from './harness.js';

/**
 * Isolation under attack (docs/security.md): each test is an attack that worked before the rule
 * it checks existed, run against the real VM, dockerd and file server.
 *
 * - the Docker socket: crafted requests go through berth to the real dockerd, and what dockerd
 *   created is compared with what berth decided (a differential test);
 * - bind sources through symbolic links, and a folder swapped for one between create and start;
 * - the file server's credentials: what a container with the VM's pid and network namespaces (and
 *   without the masked paths) can read does not open the file server;
 * - a race against the file server from inside a container;
 * - resources: plain connections that dockerd closes, abandoned half requests, and a soak of short
 *   connections (exec and attach among them) leave the control channel's streams where they were;
 * - smaller rules: the actuator's uid is not special to containers, a published port answers
 *   through the host alias as the docs say, the daemon names the signal that killed QEMU.
 */

const IMAGE = 'berth-test/iso:1';

interface Answer {
  status: number;
  body: string;
}

/** Sends raw bytes on a new connection to berth's Docker socket; the first response's status and body. */
function raw(socketPath: string, bytes: string | Buffer, ms = 20_000): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socketPath);
    let text = '';
    const timer = setTimeout(() => {
      c.destroy();
      reject(new Error(`no answer; got ${JSON.stringify(text.slice(0, 300))}`));
    }, ms);
    c.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = text.slice(0, end);
      const len = /content-length: (\d+)/i.exec(head);
      const body = text.slice(end + 4);
      if (len && body.length < Number(len[1])) return;
      if (!len && /transfer-encoding: chunked/i.test(head) && !body.endsWith('0\r\n\r\n')) return;
      clearTimeout(timer);
      c.destroy();
      resolve({ status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1] ?? 0), body });
    });
    c.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    c.write(bytes);
  });
}

function request(method: string, target: string, body?: string, extra: string[] = []): string {
  const h = [`${method} ${target} HTTP/1.1`, 'Host: docker', ...extra];
  if (body !== undefined) h.push('Content-Type: application/json', `Content-Length: ${Buffer.byteLength(body)}`);
  return `${h.join('\r\n')}\r\n\r\n${body ?? ''}`;
}

describe('isolation', { timeout: 2_400_000 }, () => {
  let b: Instance;
  let base: string;
  let share: string;
  /** Not shared: nothing here may ever be read or changed through berth. */
  let outside: string;
  let sock: string;
  let outsideBefore: string;

  const docker = async (args: string[], ok = true) => {
    const r = await b.docker(args);
    if (ok) assert.equal(r.code, 0, `docker ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const status = async () => JSON.parse((await b.berth(['status', '--json'])).stdout) as { api: { state: string; connections: number; streams: { host: number; guest: number | null } } | null };
  /** Reads the outside folder: names, sizes, modes and contents. */
  const snapshot = () =>
    fs
      .readdirSync(outside, { recursive: true })
      .map(String)
      .sort()
      .map((n) => {
        const p = path.join(outside, n);
        const st = fs.lstatSync(p);
        return `${n} ${st.mode.toString(8)} ${st.isFile() ? fs.readFileSync(p, 'hex') : ''}`;
      })
      .join('\n');

  before(async () => {
    base = fs.mkdtempSync(path.join('/tmp', 'be2e-iso-data-'));
    share = path.join(base, 'share');
    outside = path.join(base, 'outside');
    fs.mkdirSync(share);
    fs.mkdirSync(path.join(outside, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(outside, 'secret'), 'TOP-SECRET-CONTENT\n', { mode: 0o600 });
    fs.writeFileSync(path.join(outside, 'sub', 'keep'), 'keep\n');
    outsideBefore = snapshot();
    b = newInstance('iso');
    fs.writeFileSync(path.join(b.home, 'settings.json'), JSON.stringify({ shares: [{ path: share }] }));
    const r = await b.berth(['start']);
    assert.equal(r.code, 0, `start failed:\n${r.stdout}\n${r.stderr}`);
    sock = (await b.dockerHost()).replace(/^unix:\/\//, '');
    const imp = await b.docker(['import', '-', IMAGE], { input: await busyboxRootfsTar() });
    assert.equal(imp.code, 0, imp.stderr);
  });

  after(async () => {
    if (b) await b.cleanup();
    if (base) {
      // The outside folder is checked once more at the very end: nothing of any test touched it.
      const now = fs.existsSync(outside) ? snapshot() : '(gone)';
      fs.rmSync(base, { recursive: true, force: true });
      assert.equal(now, outsideBefore, 'the folder outside the shares changed');
    }
  });

  test('the Docker socket: what dockerd creates is exactly what berth decided (differential)', async () => {
    const inside = path.join(share, 'proj');
    fs.mkdirSync(inside);
    fs.symlinkSync('proj', path.join(share, 'cur'));
    const bad = (name: string) => JSON.stringify({ Image: IMAGE, Cmd: ['true'], HostConfig: { Binds: [`${outside}:/x`] }, Labels: { atk: name } });
    const refused: [string, string][] = [
      ['percent-encoded route', request('POST', '/v1.41/containers/cr%65ate?name=atk1', bad('atk1'))],
      ['extra version part', request('POST', '/v1.41.0/containers/create?name=atk2', bad('atk2'))],
      ['absolute-form target', request('POST', 'http://docker/v1.41/containers/create?name=atk3', bad('atk3'))],
      ['long-s HostConfig', request('POST', '/v1.41/containers/create?name=atk4', `{"Image":"${IMAGE}","Ho\u017ftConfig":{"Binds":["${outside}:/x"]}}`)],
      ['top-level Binds', request('POST', '/v1.41/containers/create?name=atk5', JSON.stringify({ Image: IMAGE, Binds: [`${outside}:/x`] }))],
      ['repeated HostConfig', request('POST', '/v1.41/containers/create?name=atk6', `{"Image":"${IMAGE}","HostConfig":{"Binds":["${inside}:/x"]},"hostconfig":{"Binds":["${outside}:/x"]}}`)],
      ['a second JSON value', request('POST', '/v1.41/containers/create?name=atk7', `{"Image":"${IMAGE}"}{"HostConfig":{"Binds":["${outside}:/x"]}}`)],
      ['unparseable body', request('POST', '/v1.41/containers/create?name=atk8', `{"Image":"${IMAGE}","HostConfig":{"Binds":["${outside}:/x"]}`)],
      ['Mounts of type BIND', request('POST', '/v1.41/containers/create?name=atk9', JSON.stringify({ Image: IMAGE, HostConfig: { Mounts: [{ Type: 'BIND', Source: outside, Target: '/x' }] } }))],
      ['a start with a HostConfig (API 1.23)', request('POST', '/v1.23/containers/create?name=atk10', JSON.stringify({ Image: IMAGE }))],
      ['CL and TE together', `POST /v1.41/containers/create?name=atk11 HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n${bad('atk11').length.toString(16)}\r\n${bad('atk11')}\r\n0\r\n\r\n`],
      ['local volume with bind options', request('POST', '/v1.41/volumes/create', JSON.stringify({ Name: 'atk-vol', Driver: 'local', DriverOpts: { type: 'none', o: 'bind', device: outside } }))],
      ['local overlay volume over VM paths', request('POST', '/v1.41/volumes/create', JSON.stringify({ Name: 'atk-ovl', DriverOpts: { type: 'overlay', device: 'overlay', o: 'lowerdir=/,upperdir=/tmp/u,workdir=/tmp/w' } }))],
      ['plugin with a host mount', request('POST', '/v1.41/plugins/pull?remote=localhost:1/p:1&name=p', JSON.stringify([{ Name: 'mount', Value: ['/etc'] }]))],
      ["a VM disk as a device", request('POST', '/v1.41/containers/create?name=atk12', JSON.stringify({ Image: IMAGE, HostConfig: { Devices: [{ PathOnHost: '/dev/vda', PathInContainer: '/dev/x', CgroupPermissions: 'rwm' }] } }))],
    ];
    for (const [what, bytes] of refused) {
      const a = await raw(sock, bytes);
      assert.ok(a.status >= 400 && a.status < 500, `${what}: status ${a.status} ${a.body}`);
      assert.match(a.body, /berth: /, what);
    }
    const listed = await docker(['ps', '-a', '--filter', 'label=atk', '--format', '{{.Names}}']);
    assert.equal(listed.stdout.trim(), '', 'no attack created a container');
    const vols = await docker(['volume', 'ls', '-q']);
    assert.doesNotMatch(vols.stdout, /atk-/);

    // What berth lets through, dockerd stores exactly as berth decided: the canonical field, and
    // a symlink inside the share replaced by the folder it names.
    const allowed: [string, string, string[]][] = [
      ['lower-case keys', `{"Image":"${IMAGE}","Cmd":["true"],"hostconfig":{"binds":["${inside}:/x:ro"]}}`, [`${inside}:/x:ro`]],
      ['a symlink inside the share', JSON.stringify({ Image: IMAGE, Cmd: ['true'], HostConfig: { Binds: [`${path.join(share, 'cur')}:/x`] } }), [`${inside}:/x`]],
    ];
    for (const [i, [what, body, binds]] of allowed.entries()) {
      const a = await raw(sock, request('POST', `/v1.41/containers/create?name=ok${i}`, body));
      assert.equal(a.status, 201, `${what}: ${a.body}`);
      const inspected = JSON.parse((await docker(['inspect', `ok${i}`])).stdout) as { HostConfig: { Binds: string[] } }[];
      assert.deepEqual(inspected[0]!.HostConfig.Binds, binds, what);
      await docker(['rm', `ok${i}`]);
    }
  });

  test('bind sources: a symlink out of the share is refused; a folder swapped for one before the start is not started', async () => {
    fs.symlinkSync(outside, path.join(share, 'to-outside'));
    fs.symlinkSync('/var/run/docker.sock', path.join(share, 'to-engine'));
    for (const src of ['to-outside', 'to-engine']) {
      const r = await docker(['run', '--rm', '-v', `${path.join(share, src)}:/x`, IMAGE, 'true'], false);
      assert.notEqual(r.code, 0, src);
      assert.match(r.stderr, /symbolic link/, src);
    }
    const swapped = path.join(share, 'swap');
    fs.mkdirSync(swapped);
    fs.writeFileSync(path.join(swapped, 'inside.txt'), 'inside\n');
    await docker(['create', '--name', 'swapper', '-v', `${swapped}:/x`, IMAGE, 'cat', '/x/inside.txt', '/x/secret']);
    fs.renameSync(swapped, `${swapped}.real`);
    fs.symlinkSync(outside, swapped);
    const r = await docker(['start', '-a', 'swapper'], false);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /is now a symbolic link/);
    assert.doesNotMatch(r.stdout, /TOP-SECRET/);
    await docker(['rm', '-f', 'swapper']);
  });

  test('the file server: what a container with the VM\'s namespaces can read does not open it', { skip: VM_ONLY }, async () => {
    // --pid=host and --network host, and /sys/firmware unmasked: the boot's tickets are readable
    // (fw_cfg), and every process's mounts and command line.
    const script = [
      'cat /proc/*/mountinfo 2>/dev/null | grep -i " 9p " | head -5',
      'echo ---',
      'cat /sys/firmware/qemu_fw_cfg/by_name/opt/berth/shares/raw',
      'echo ---',
      'gw=$(ip route | awk \'/^default/ { print $3; exit }\')',
      'for t in $(cut -f4 /sys/firmware/qemu_fw_cfg/by_name/opt/berth/shares/raw); do printf "berth-9p %s\\n" "$t" | timeout 5 nc "$gw" 564 | head -c 20; echo " <- $t"; done',
    ].join('; ');
    const r = await docker(['run', '--rm', '--pid=host', '--network=host', '--security-opt', 'systempaths=unconfined', IMAGE, 'sh', '-c', script], false);
    const [mounts, fwcfg, tries] = r.stdout.split('---\n');
    assert.match(mounts ?? '', /trans=fd/, `the shares are mounted over a proven connection: ${mounts}`);
    assert.doesNotMatch(mounts ?? '', /aname=[0-9a-f]{20,}/, 'no credential in the mount options');
    assert.match(fwcfg ?? '', /\t[0-9a-f]{32,}\t/, `the boot tickets are readable this way: ${fwcfg}`);
    assert.match(tries ?? '', /<- [0-9a-f]+/, `the container tried them: ${r.stdout}${r.stderr}`);
    assert.doesNotMatch(tries ?? '', /^ok/m, `a used ticket opened the file server: ${tries}`);
    // The shares still work.
    fs.writeFileSync(path.join(share, 'still.txt'), 'still\n');
    assert.equal((await docker(['run', '--rm', '-v', `${share}:/s`, IMAGE, 'cat', '/s/still.txt'])).stdout, 'still\n');
  });

  test('a container racing the file server with renames and symlinks inside the share reaches nothing outside', async () => {
    const arena = path.join(share, 'arena');
    fs.mkdirSync(path.join(arena, 'd'), { recursive: true });
    fs.writeFileSync(path.join(arena, 'd', 'secret'), 'decoy\n');
    // The victim works inside d through a held directory (its cwd: a fid of d on the server);
    // the racer swaps d for a symlink whose text is the outside folder's host path, as fast as it
    // can.
    const collect = (args: string[]) => {
      const child = spawn(dockerCli(), ['-H', `unix://${sock}`, ...args], { env: b.env, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      return new Promise<string>((resolve) => child.on('close', () => resolve(out)));
    };
    const victimDone = collect(['run', '--rm', '-v', `${arena}:/a`, IMAGE, 'sh', '-c', 'cd /a/d || exit 1; end=$(($(date +%s)+30)); n=0; while [ $(date +%s) -lt $end ]; do cat secret 2>/dev/null; echo x > new.$n 2>/dev/null; chmod 777 secret 2>/dev/null; mkdir m.$n 2>/dev/null; rm -rf new.$n m.$n 2>/dev/null; n=$((n+1)); done; echo rounds $n']);
    await sleep(5000);
    const racerDone = collect(['run', '--rm', '-v', `${arena}:/a`, IMAGE, 'sh', '-c', `cd /a; end=$(($(date +%s)+25)); while [ $(date +%s) -lt $end ]; do mv d d2 && ln -s ${outside} d && rm d && mv d2 d; done`]);
    const victim = { stdout: await victimDone };
    await racerDone;
    assert.match(victim.stdout, /rounds \d+/);
    assert.doesNotMatch(victim.stdout, /TOP-SECRET/);
    assert.equal(snapshot(), outsideBefore);
  });

  test('resources: connections dockerd closes, abandoned half requests and a soak of short sessions leave the streams where they were', async () => {
    const s0 = (await status()).api!;
    assert.equal(s0.state, 'ok');
    // 1,500 pings with Connection: close: dockerd closes each one first.
    for (let i = 0; i < 1500; i++) {
      const a = await raw(sock, request('GET', '/_ping', undefined, ['Connection: close']));
      assert.equal(a.status, 200, `ping ${i}`);
    }
    // 1,100 clients that send half a request and leave. A client closes at once, long before the
    // daemon has opened its stream to the VM; the kernel's accept queue then pushes back (EAGAIN),
    // and the client tries again, as a real one would.
    for (let i = 0; i < 1100; i++) {
      for (;;) {
        const err = await new Promise<string | undefined>((resolve) => {
          const c = net.connect(sock, () => {
            c.write(i % 2 ? 'POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 100\r\n\r\n{"Im' : 'GET /v1.41/containers/js');
            setTimeout(() => c.destroy(), 5);
          });
          c.on('close', () => resolve(undefined));
          c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code));
        });
        if (err !== 'EAGAIN') break;
        await sleep(50);
      }
    }
    assert.equal((await raw(sock, request('GET', '/_ping'))).status, 200, 'the API still answers');
    await docker(['run', '-d', '--name', 'soak', IMAGE, 'sh', '-c', 'while true; do echo tick; sleep 1; done']);
    // 5,000 short connections, closed from either side, with exec and attach sessions among them.
    for (let i = 0; i < 5000; i++) {
      if (i % 250 === 0) await docker(['exec', 'soak', 'true']);
      else if (i % 250 === 125) await docker(['logs', '--tail', '1', 'soak']);
      else if (i % 250 === 60) {
        const attach = spawn(dockerCli(), ['-H', `unix://${sock}`, 'attach', '--no-stdin', 'soak'], { env: b.env, stdio: 'ignore' });
        await sleep(300);
        attach.kill('SIGKILL');
      } else if (i % 2) await raw(sock, request('GET', '/v1.41/version', undefined, ['Connection: close']));
      else {
        const a = await raw(sock, request('GET', '/v1.41/containers/soak/json'));
        assert.equal(a.status, 200);
      }
    }
    await docker(['rm', '-f', 'soak']);
    let s1 = (await status()).api!;
    for (let i = 0; i < 50 && (s1.streams.host > s0.streams.host || (s1.streams.guest ?? 0) > (s0.streams.guest ?? 0)); i++) {
      await sleep(200);
      s1 = (await status()).api!;
    }
    assert.equal(s1.streams.host, s0.streams.host, `host streams ${JSON.stringify(s0)} → ${JSON.stringify(s1)}`);
    assert.equal(s1.streams.guest, s0.streams.guest, `guest streams ${JSON.stringify(s0)} → ${JSON.stringify(s1)}`);
  });

  test("smaller rules: the actuator's old uid writes like any other; a published port answers through the host alias", async () => {
    if (E2E_BACKEND === 'vm') {
      // The 9P file server's actuator uid (docs/files.md): not special to containers.
      await docker(['run', '--rm', '-u', '2147483646', '-v', `${share}:/s`, IMAGE, 'sh', '-c', 'echo written > /s/by-2147483646.txt']);
      assert.equal(fs.readFileSync(path.join(share, 'by-2147483646.txt'), 'utf8'), 'written\n');
    }
    await docker(['run', '-d', '--name', 'web', '-p', '127.0.0.1:18093:80', IMAGE, 'sh', '-c', 'mkdir -p /w && echo hello-from-web > /w/index.html && httpd -f -p 80 -h /w']);
    let body = '';
    for (let i = 0; i < 20 && !body.includes('hello-from-web'); i++) {
      await sleep(500);
      body = (await docker(['run', '--rm', IMAGE, 'sh', '-c', 'timeout 5 wget -q -O - http://host.docker.internal:18093/'], false)).stdout;
    }
    assert.match(body, /hello-from-web/, 'a container reaches a published port through the host alias (docs/network.md)');
    await docker(['rm', '-f', 'web']);
  });

  test('the daemon log names the signal that killed the guest (QEMU, or the namespace\'s PID 1)', async () => {
    const [pid] = guestPids(b.home);
    assert.ok(pid, 'the guest runs');
    process.kill(pid!, 'SIGKILL');
    const log = path.join(b.home, 'logs', 'daemon.log');
    let text = '';
    for (let i = 0; i < 50 && !/the guest exited unexpectedly/.test(text); i++) {
      await sleep(200);
      text = fs.readFileSync(log, 'utf8');
    }
    assert.match(text, E2E_BACKEND === 'vm' ? /the guest exited unexpectedly err="The VM stopped unexpectedly: QEMU was killed by SIGKILL\."/ : /the guest exited unexpectedly err="The namespace stopped unexpectedly: its PID 1 \(pid \d+\) ended: killed, or powered off after a fatal error/);
    const s = JSON.parse((await b.berth(['status', '--json'])).stdout) as { state: string; failure: { message: string } | null };
    assert.equal(s.state, 'failed');
    assert.match(s.failure?.message ?? '', E2E_BACKEND === 'vm' ? /SIGKILL/ : /PID 1 .* ended/);
    assert.ok(daemonPid(b.home));
  });
});
