import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isWithin } from '../util/paths.js';
import { BerthError, errnoCode } from '../util/errors.js';
import { MAX_SOCKET_PATH } from '../util/unix-socket.js';
import { parseCidr, prefixMask } from '../net/address.js';

/**
 * User settings, stored as JSON in $BERTH_HOME/settings.json. Every key is optional in the file;
 * missing keys take the defaults below. A file that does not parse or holds an invalid value is
 * never overwritten: the error names the file, the key and the accepted values.
 */
export interface Settings {
  /** Virtual CPUs. Default: host cores, at most 4. */
  cpus: number;
  /** Guest memory in MiB. Default 2048. */
  memoryMiB: number;
  /** Virtual size of the data disk in GiB (sparse: only used blocks take host space). Default 64. */
  diskGiB: number;
  /** Accelerator: "auto" probes kvm/hvf/whpx and falls back to tcg. */
  accelerator: 'auto' | 'kvm' | 'tcg';
  /** Host path of the Docker API socket. Default $BERTH_HOME/run/docker.sock. */
  dockerSocket: string | null;
  /** Seconds `start` waits for the engine before giving up (TCG is slow: generous default). */
  startTimeoutSec: number;
  /** Seconds `stop` waits for a clean shutdown before forcing the VM off. */
  stopTimeoutSec: number;
  /** The guest network (docs/network.md "Address plan"). */
  'network.subnet': string;
  /** MTU of the guest link and of dockerd's bridges. */
  'network.mtu': number;
  /** Let containers reach 169.254.0.0/16 (cloud metadata services). */
  'network.allowLinkLocal': boolean;
  /** "berth" (the translator) or "qemu-user" (QEMU's built-in slirp: no port publishing; a fallback). */
  'network.backend': 'berth' | 'qemu-user';
  /** Host address for ports published without one (`-p 8080:80`). */
  'ports.defaultAddress': '127.0.0.1' | '0.0.0.0';
  /** Forwards to ports opened in the VM outside Docker: "tcp:8022:22", "udp:127.0.0.1:5353:53". */
  'ports.extra': string[];
  /** Host folders shared into the VM at their own paths (docs/files.md); bind mounts must be inside one. */
  shares: ShareSetting[];
  /**
   * Paths of the VM itself that containers may bind-mount or use as devices (docs/docker-proxy.md
   * "What a body may name"). The VM's disks are never allowed.
   */
  vmPaths: string[];
  /**
   * The engine version pack the VM boots (an id from guest/manifest.json's packs, `berth engine
   * list`). A change takes effect at the next start; a switch to an engine older than the one that
   * last wrote the data disk is refused (docs/engine-packs.md).
   */
  'engine.version': string;
  /** Link the engine's docker CLI plugins (compose, buildx) into ~/.docker/cli-plugins where the user has none. */
  'docker.cliPlugins': boolean;
  /**
   * Where the guest runs (docs/backends.md): "vm" (QEMU, the default and the stronger boundary) or
   * "namespace" (the same image in namespaces on the host's kernel; Linux, root; docs/namespace.md).
   */
  backend: 'vm' | 'namespace';
  /**
   * With the namespace backend: let containers have --privileged, added capabilities, host
   * devices and unconfined profiles, which reach the host's kernel (docs/namespace.md). Off.
   */
  'namespace.allowPrivileged': boolean;
}

export interface ShareSetting {
  path: string;
  readOnly?: boolean;
  /**
   * The VM caches names, attributes and file contents of this share (v9fs cache=loose), kept
   * fresh by the change events (docs/files.md "Caching"). Off by default.
   */
  cache?: boolean;
}

export const SETTING_KEYS = [
  'cpus',
  'memoryMiB',
  'diskGiB',
  'accelerator',
  'dockerSocket',
  'startTimeoutSec',
  'stopTimeoutSec',
  'network.subnet',
  'network.mtu',
  'network.allowLinkLocal',
  'network.backend',
  'ports.defaultAddress',
  'ports.extra',
  'shares',
  'engine.version',
  'docker.cliPlugins',
  'vmPaths',
  'backend',
  'namespace.allowPrivileged',
] as const;
export type SettingKey = (typeof SETTING_KEYS)[number];

/** The engine pack used unless engine.version says otherwise (a pack of guest/manifest.json). */
export const DEFAULT_ENGINE = '26';

export function defaultSettings(): Settings {
  return {
    cpus: Math.max(1, Math.min(4, os.cpus().length)),
    memoryMiB: 2048,
    diskGiB: 64,
    accelerator: 'auto',
    dockerSocket: null,
    startTimeoutSec: 180,
    stopTimeoutSec: 30,
    'network.subnet': '198.19.248.0/24',
    'network.mtu': 65520,
    'network.allowLinkLocal': false,
    'network.backend': 'berth',
    'ports.defaultAddress': '127.0.0.1',
    'ports.extra': [],
    shares: [{ path: os.homedir() }, { path: os.tmpdir() }],
    vmPaths: ['/var/run/docker.sock', '/run/docker.sock', '/dev/fuse', '/dev/net/tun'],
    'engine.version': DEFAULT_ENGINE,
    'docker.cliPlugins': true,
    backend: 'vm',
    'namespace.allowPrivileged': false,
  };
}

interface Rule {
  check(v: unknown): string | undefined; // undefined = ok, else what is accepted
}

const hostMiB = Math.floor(os.totalmem() / 1024 / 1024);

const RULES: Record<SettingKey, Rule> = {
  cpus: intRule(1, Math.max(1, os.cpus().length)),
  memoryMiB: intRule(512, Math.max(512, hostMiB - 256)),
  diskGiB: intRule(8, 16384),
  accelerator: { check: (v) => (v === 'auto' || v === 'kvm' || v === 'tcg' ? undefined : '"auto", "kvm" or "tcg"') },
  dockerSocket: {
    check: (v) => {
      if (v === null) return undefined;
      if (typeof v !== 'string' || !path.isAbsolute(v)) return 'null or an absolute path';
      if (Buffer.byteLength(v) > MAX_SOCKET_PATH) return `a path of at most ${MAX_SOCKET_PATH} bytes (Unix socket limit)`;
      return undefined;
    },
  },
  startTimeoutSec: intRule(10, 3600),
  stopTimeoutSec: intRule(1, 600),
  'network.subnet': { check: (v) => (typeof v === 'string' ? subnetProblem(v) : 'an IPv4 network in CIDR form, like "198.19.248.0/24"') },
  'network.mtu': intRule(1280, 65520),
  'network.allowLinkLocal': boolRule(),
  'network.backend': { check: (v) => (v === 'berth' || v === 'qemu-user' ? undefined : '"berth" or "qemu-user"') },
  'ports.defaultAddress': { check: (v) => (v === '127.0.0.1' || v === '0.0.0.0' ? undefined : '"127.0.0.1" or "0.0.0.0"') },
  shares: { check: sharesProblem },
  'docker.cliPlugins': boolRule(),
  backend: { check: (v) => (v === 'vm' || v === 'namespace' ? undefined : '"vm" or "namespace"') },
  'namespace.allowPrivileged': boolRule(),
  'engine.version': { check: (v) => (typeof v === 'string' && /^[0-9]+(\.[0-9]+)?$/.test(v) ? undefined : 'an engine version such as "26" or "20.10" (`berth engine list`)') },
  vmPaths: {
    check: (v) => {
      const what = 'a list of at most 64 absolute paths of the VM, like ["/var/run/docker.sock", "/dev/fuse"]';
      if (!Array.isArray(v) || v.length > 64) return what;
      for (const e of v) if (typeof e !== 'string' || !path.posix.isAbsolute(e) || e.includes('\0') || path.posix.normalize(e) !== e || e === '/') return `${what} (${JSON.stringify(e)} is not a normalized absolute path other than "/")`;
      return undefined;
    },
  },
  'ports.extra': {
    check: (v) => {
      const what = 'a list of at most 64 forwards like "tcp:8022:22" or "udp:127.0.0.1:5353:53"';
      if (!Array.isArray(v) || v.length > 64) return what;
      for (const e of v) if (typeof e !== 'string' || !parseExtraForward(e)) return `${what} (${JSON.stringify(e)} is not one)`;
      return undefined;
    },
  },
};

/** VM paths a share must not cover or sit inside: the VM's own system and the engine's state. */
const VM_OWN_PATHS = ['/proc', '/sys', '/dev', '/run', '/var/run', '/var/lib/docker', '/var/lib/containerd', '/usr', '/etc', '/bin', '/sbin', '/lib', '/lib64', '/boot', '/mnt/data'];

function sharesProblem(v: unknown): string | undefined {
  const what = 'a list of at most 32 folders like [{"path": "/home/me", "cache": true}, {"path": "/data", "readOnly": true}]: absolute paths, not "/" and not a system folder of the VM (/usr, /etc, /var/lib/docker, ...)';
  if (!Array.isArray(v) || v.length > 32) return what;
  for (const e of v) {
    if (!e || typeof e !== 'object' || Array.isArray(e)) return what;
    const o = e as Record<string, unknown>;
    if (Object.keys(o).some((k) => k !== 'path' && k !== 'readOnly' && k !== 'cache')) return `${what} (unknown key in ${JSON.stringify(e)})`;
    if (typeof o.path !== 'string' || !path.isAbsolute(o.path) || /[\0\t\n]/.test(o.path)) return `${what} (${JSON.stringify(o.path)} is not an absolute path without tabs or newlines)`;
    if (o.readOnly !== undefined && typeof o.readOnly !== 'boolean') return `${what} (readOnly must be true or false)`;
    if (o.cache !== undefined && typeof o.cache !== 'boolean') return `${what} (cache must be true or false)`;
    const p = path.posix.normalize(o.path).replace(/(.)\/+$/, '$1');
    if (p === '/' || VM_OWN_PATHS.some((vm) => isWithin(p, vm) || isWithin(vm, p))) return `${what} (${p} would hide part of the VM)`;
  }
  return undefined;
}

function boolRule(): Rule {
  return { check: (v) => (typeof v === 'boolean' ? undefined : 'true or false') };
}

/** An extra forward: a host port to a port of the VM itself. */
export interface ExtraForward {
  proto: 'tcp' | 'udp';
  hostIp: string;
  hostPort: number;
  vmPort: number;
}

/** Parses "proto:[hostIp:]hostPort:vmPort"; undefined if malformed. */
export function parseExtraForward(text: string): ExtraForward | undefined {
  const m = /^(tcp|udp):(?:(\d{1,3}(?:\.\d{1,3}){3}):)?(\d{1,5}):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const hostPort = Number(m[3]);
  const vmPort = Number(m[4]);
  if (hostPort < 1 || hostPort > 65535 || vmPort < 1 || vmPort > 65535) return undefined;
  const hostIp = m[2] ?? '127.0.0.1';
  if (hostIp.split('.').some((o) => Number(o) > 255)) return undefined;
  return { proto: m[1] as 'tcp' | 'udp', hostIp, hostPort, vmPort };
}

/**
 * Why a guest subnet is unusable, or undefined. It must be a /24 or larger IPv4 network and must
 * not overlap what the VM itself uses: loopback, link-local, multicast, and Docker's bridge pool
 * 172.16.0.0/12 (docker0 is 172.17.0.0/16 inside the VM).
 */
function subnetProblem(text: string): string | undefined {
  const what = 'an IPv4 network of /24 or larger in CIDR form, like "198.19.248.0/24", not inside 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4 or Docker\'s 172.16.0.0/12';
  const cidr = parseCidr(text);
  if (!cidr || cidr.prefix < 8 || cidr.prefix > 24) return what;
  const { ip, prefix } = cidr;
  if ((ip & ~prefixMask(prefix)) >>> 0 !== 0) return `${what} (host bits are set)`;
  const overlaps = (net: number, bits: number) => {
    const m = prefixMask(Math.min(bits, prefix));
    return ((ip & m) >>> 0) === ((net & m) >>> 0);
  };
  if (overlaps(0x7f000000, 8) || overlaps(0xa9fe0000, 16) || overlaps(0xe0000000, 4) || overlaps(0xac100000, 12) || ip >>> 24 === 0) return what;
  return undefined;
}

function intRule(min: number, max: number): Rule {
  return {
    check: (v) => (typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? undefined : `an integer from ${min} to ${max}`),
  };
}

export function isSettingKey(k: string): k is SettingKey {
  return (SETTING_KEYS as readonly string[]).includes(k);
}

/** Validates a parsed settings object (partial) and merges it over the defaults. */
export function validateSettings(raw: unknown, file: string): Settings {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw invalid(file, 'the file must hold a JSON object such as {"cpus": 2}');
  }
  const out = defaultSettings();
  for (const [k, v] of Object.entries(raw as Record<string, unknown>)) {
    if (!isSettingKey(k)) {
      throw invalid(file, `unknown key "${k}"; known keys: ${SETTING_KEYS.join(', ')}`);
    }
    const accepted = RULES[k].check(v);
    if (accepted !== undefined) throw invalid(file, `"${k}" is ${JSON.stringify(v)}; it must be ${accepted}`);
    (out as unknown as Record<string, unknown>)[k] = v;
  }
  return out;
}

function invalid(file: string, why: string): BerthError {
  return new BerthError('SETTINGS_INVALID', `Settings file ${file} is invalid: ${why}.`, {
    hint: `Fix the file by hand or run \`berth settings set <key> <value>\`; the file was left as it is.`,
    details: { file },
  });
}

export async function readSettings(file: string): Promise<Settings> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return defaultSettings();
    throw new BerthError('SETTINGS_UNREADABLE', `Cannot read settings file ${file}.`, {
      cause: err,
      hint: 'Check the file permissions of your berth home.',
    });
  }
  let parsed: unknown;
  try {
    parsed = text.trim() === '' ? {} : JSON.parse(text);
  } catch (err) {
    throw new BerthError('SETTINGS_INVALID', `Settings file ${file} is not valid JSON: ${(err as Error).message}.`, {
      hint: 'Fix the JSON syntax (or delete the file to go back to the defaults); the file was left as it is.',
      details: { file },
    });
  }
  return validateSettings(parsed, file);
}

/**
 * Parses a command-line value for a key ("2", "tcg", "null"), validates the result and writes the
 * file atomically. Keys already in the file are kept as they are.
 */
export async function setSetting(file: string, key: string, value: string): Promise<Settings> {
  if (!isSettingKey(key)) {
    throw new BerthError('USAGE', `Unknown setting "${key}".`, { hint: `Known settings: ${SETTING_KEYS.join(', ')}.` });
  }
  let current: Record<string, unknown> = {};
  try {
    const text = await fs.readFile(file, 'utf8');
    if (text.trim() !== '') current = JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    if (errnoCode(err) !== 'ENOENT') {
      // Re-read through the validating path for a precise message; never overwrite a broken file.
      await readSettings(file);
      throw err;
    }
  }
  // A version such as 26 reads as a number, but the setting is a string.
  const parsedValue = key === 'engine.version' ? value : parseValue(value);
  const next = { ...current, [key]: parsedValue };
  const settings = validateSettings(next, file);
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
  await fs.rename(tmp, file);
  return settings;
}

/** A command-line value: null, true/false, an integer, a JSON list or object, else the string itself. */
function parseValue(value: string): unknown {
  if (value === 'null') return null;
  if (value === 'true' || value === 'false') return value === 'true';
  if (/^-?\d+$/.test(value)) return Number(value);
  if (/^\s*[[{]/.test(value)) {
    try {
      return JSON.parse(value);
    } catch {
      return value;
    }
  }
  return value;
}
