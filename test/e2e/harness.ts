import { execFile, spawn, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Helpers for end-to-end tests. Each suite gets its own BERTH_HOME and DOCKER_CONFIG under
 * /tmp (short paths: Unix sockets are limited to 107 bytes) and shares the image cache
 * (BERTH_CACHE, default ~/.cache/berth), so the guest image is built once per machine.
 * Everything is real: the CLI in bin/berth, the daemon it spawns, QEMU, the guest, the docker CLI.
 */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const berthBin = path.join(repoRoot, 'bin', 'berth');

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Instance {
  home: string;
  env: NodeJS.ProcessEnv;
  berth(args: string[], opts?: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv }): Promise<RunResult>;
  docker(args: string[], opts?: { input?: string | Buffer; timeoutMs?: number }): Promise<RunResult>;
  dockerHost(): Promise<string>;
  cleanup(): Promise<void>;
}

export function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 300_000, maxBuffer: 64 * 1024 * 1024, cwd: opts.cwd, encoding: 'buffer' }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/**
 * The backend the suite runs against: BERTH_E2E_BACKEND=namespace runs every `berth start` with
 * `--backend namespace` (docs/namespace.md); unset, the VM.
 */
export const E2E_BACKEND: 'vm' | 'namespace' = process.env.BERTH_E2E_BACKEND === 'namespace' ? 'namespace' : 'vm';

/**
 * `{ skip: VM_ONLY }` on a test about the VM itself (QEMU, its kernel, the 9P file server, binfmt
 * emulation): on the namespace backend it is skipped with this reason.
 */
export const VM_ONLY: string | false = E2E_BACKEND === 'namespace' ? 'about the VM itself (QEMU, its kernel, the 9P file server or emulation)' : false;

export function withBackend(args: string[]): string[] {
  return E2E_BACKEND === 'namespace' && args[0] === 'start' ? [...args, '--backend', 'namespace'] : args;
}

export function newInstance(name: string, extraEnv: NodeJS.ProcessEnv = {}): Instance {
  const home = fs.mkdtempSync(path.join('/tmp', `be2e-${name}-`));
  const dockerConfig = path.join(home, 'docker-config');
  fs.mkdirSync(dockerConfig);
  const env: NodeJS.ProcessEnv = { ...process.env, BERTH_HOME: home, DOCKER_CONFIG: dockerConfig, ...extraEnv };
  delete env.DOCKER_HOST;
  delete env.DOCKER_CONTEXT;
  const inst: Instance = {
    home,
    env,
    berth: (args, opts = {}) => run(berthBin, withBackend(args), { env: { ...env, ...(opts.env ?? {}) }, ...(opts.input !== undefined ? { input: opts.input } : {}), timeoutMs: opts.timeoutMs ?? 600_000 }),
    docker: async (args, opts = {}) => run(dockerCli(), ['-H', await inst.dockerHost(), ...args], { env, ...(opts.input !== undefined ? { input: opts.input } : {}), timeoutMs: opts.timeoutMs ?? 300_000 }),
    dockerHost: async () => {
      const s = await inst.berth(['status', '--json']);
      return (JSON.parse(s.stdout) as { dockerHost: string }).dockerHost;
    },
    cleanup: async () => {
      await inst.berth(['stop'], { timeoutMs: 120_000 });
      killStrays(home);
      // The logs outlive the instance, for diagnosing a failure after the fact (CI prints where).
      const keep = path.join(process.env.BERTH_E2E_LOGS ?? '/tmp/berth-e2e-logs', path.basename(home));
      try {
        fs.cpSync(path.join(home, 'logs'), keep, { recursive: true });
        // Errors the daemon logged (a crashed worker, an uncaught exception) and guest kernel
        // trouble, in the test output: CI keeps nothing else.
        const daemon = fs.readFileSync(path.join(keep, 'daemon.log'), 'utf8').split('\n').filter((l) => / ERROR /.test(l));
        const vm = fs.readFileSync(path.join(keep, 'vm.log'), 'utf8').split('\n').filter((l) => /soft lockup|BUG|Oops|panic|rcu.*stall/i.test(l));
        if (daemon.length || vm.length) process.stderr.write(`[${path.basename(home)}] logs kept in ${keep}\n${[...daemon.slice(-20), ...vm.slice(-10)].join('\n')}\n`);
      } catch {
        // no logs (the instance never started)
      }
      fs.rmSync(home, { recursive: true, force: true });
    },
  };
  return inst;
}

/** The docker CLI: the host's if installed, else the one an engine pack carries. */
export function dockerCli(): string {
  for (const dir of (process.env.PATH ?? '').split(':')) {
    const p = path.join(dir, 'docker');
    if (dir && fs.existsSync(p)) return p;
  }
  // The default engine's pack (26): its CLI knows BuildKit and the plugins.
  const packs = path.join(cacheDir(), 'packs');
  for (const d of fs.existsSync(packs) ? fs.readdirSync(packs) : []) {
    const p = path.join(packs, d, 'docker');
    const id = (() => {
      try {
        return (JSON.parse(fs.readFileSync(path.join(packs, d, 'versions.json'), 'utf8')) as { id?: string }).id;
      } catch {
        return undefined;
      }
    })();
    if (id === '26' && fs.existsSync(p)) return p;
  }
  throw new Error('no docker CLI on PATH and no engine pack with one: run `bin/berth image build` first');
}

export function cacheDir(): string {
  return process.env.BERTH_CACHE || path.join(process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'berth');
}

/** Kills any process still using this home (a failed test must not leave QEMU running). */
export function killStrays(home: string): void {
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      const environ = fs.readFileSync(`/proc/${pid}/environ`, 'utf8');
      if (cmd.includes(home) || environ.includes(`BERTH_HOME=${home}\0`)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // gone or not ours
    }
  }
}

/** Pids of QEMU processes whose command line mentions this home. */
/**
 * The guest's process as `berth status` names it (qemuPid): QEMU for the VM, the namespace's
 * PID 1 for the namespace backend (none once it is gone).
 */
export function guestPids(home: string): number[] {
  if (E2E_BACKEND === 'vm') return qemuPids(home);
  try {
    const { pid1 } = JSON.parse(fs.readFileSync(path.join(home, 'run', 'namespace.json'), 'utf8')) as { pid1: number };
    return fs.existsSync(`/proc/${pid1}/environ`) && fs.readFileSync(`/proc/${pid1}/environ`, 'utf8').includes('BERTH_INSTANCE=') ? [pid1] : [];
  } catch {
    return [];
  }
}

export function qemuPids(home: string): number[] {
  const out: number[] = [];
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.startsWith('qemu-system') || cmd.includes('/qemu-system')) {
        if (cmd.includes(home)) out.push(Number(pid));
      }
    } catch {
      // gone
    }
  }
  return out;
}

/** Pid of the daemon of this home, from its pid file. */
export function daemonPid(home: string): number | undefined {
  try {
    return Number.parseInt(fs.readFileSync(path.join(home, 'run', 'daemon.pid'), 'utf8'), 10);
  } catch {
    return undefined;
  }
}

/**
 * A root filesystem tarball made from Debian's busybox-static (taken from the image builder's
 * package cache): /bin/busybox plus a symlink per applet. Imported with `docker import`; no registry.
 */
export async function busyboxRootfsTar(): Promise<Buffer> {
  const debs = path.join(cacheDir(), 'debs');
  const deb = fs.readdirSync(debs).find((f) => f.startsWith('busybox-static_') && f.endsWith('_amd64.deb'));
  if (!deb) throw new Error(`busybox-static .deb not found in ${debs}: build the image first`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'berth-bb-'));
  try {
    const x = await run('dpkg-deb', ['-x', path.join(debs, deb), path.join(work, 'x')]);
    if (x.code !== 0) throw new Error(`dpkg-deb failed: ${x.stderr}`);
    const root = path.join(work, 'root');
    for (const d of ['bin', 'etc', 'tmp', 'root', 'proc', 'sys', 'dev']) fs.mkdirSync(path.join(root, d), { recursive: true });
    fs.copyFileSync(path.join(work, 'x', 'bin', 'busybox'), path.join(root, 'bin', 'busybox'));
    fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
    const list = await run(path.join(root, 'bin', 'busybox'), ['--list']);
    for (const applet of list.stdout.split('\n').filter(Boolean)) {
      if (applet !== 'busybox') fs.symlinkSync('busybox', path.join(root, 'bin', applet));
    }
    fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n');
    fs.writeFileSync(path.join(root, 'etc', 'group'), 'root:x:0:\nnogroup:x:65534:\n');
    const tar = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const p = spawn('tar', ['-C', root, '--owner=0', '--group=0', '-c', '.'], { stdio: ['ignore', 'pipe', 'inherit'] } as SpawnOptions);
      p.stdout!.on('data', (d: Buffer) => chunks.push(d));
      p.on('error', reject);
      p.on('close', (code) => (code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`tar exited ${code}`))));
    });
    return tar;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
