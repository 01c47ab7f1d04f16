import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { BerthError, errnoCode } from '../util/errors.js';
import { MAX_SOCKET_PATH } from './paths.js';

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
}

export const SETTING_KEYS = ['cpus', 'memoryMiB', 'diskGiB', 'accelerator', 'dockerSocket', 'startTimeoutSec', 'stopTimeoutSec'] as const;
export type SettingKey = (typeof SETTING_KEYS)[number];

export function defaultSettings(): Settings {
  return {
    cpus: Math.max(1, Math.min(4, os.cpus().length)),
    memoryMiB: 2048,
    diskGiB: 64,
    accelerator: 'auto',
    dockerSocket: null,
    startTimeoutSec: 180,
    stopTimeoutSec: 30,
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
};

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
  const parsedValue = parseValue(value);
  const next = { ...current, [key]: parsedValue };
  const settings = validateSettings(next, file);
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
  await fs.rename(tmp, file);
  return settings;
}

function parseValue(value: string): unknown {
  if (value === 'null') return null;
  if (/^-?\d+$/.test(value)) return Number(value);
  return value;
}
