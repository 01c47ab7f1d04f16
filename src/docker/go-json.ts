/**
 * JSON as dockerd's Go code reads it (docs/docker-proxy.md "Go's JSON"). Two layers:
 *
 * - `parseJson`: the only code that reads a JSON request body. Strict RFC 8259 grammar, exactly
 *   one value with whitespace around it, bounded depth, never throws. Object members keep their
 *   order and duplicates (Go's decoder sees every one of them).
 * - codecs (`struct`, `list`, `map`, `str`, ...): decode a parsed value into a typed one with Go's
 *   field matching (exact name, else Unicode simple case folding), refuse what Go would merge
 *   (two keys reaching one field) and modelled fields of the wrong type, keep unmodelled members
 *   as raw JSON, and encode the typed value back. The proxy checks the typed value and forwards
 *   what `encode` makes of it, so dockerd acts on exactly what was checked.
 */

export type JsonValue =
  | { t: 'object'; members: [string, JsonValue][] }
  | { t: 'array'; items: JsonValue[] }
  | { t: 'string'; v: string }
  | { t: 'number'; raw: string }
  | { t: 'bool'; v: boolean }
  | { t: 'null' };

export type ParseResult = { ok: true; value: JsonValue } | { ok: false; reason: string };

export const MAX_JSON_DEPTH = 256;

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/** Parses exactly one JSON value (whitespace around it allowed). */
export function parseJson(buf: Buffer, maxDepth = MAX_JSON_DEPTH): ParseResult {
  const p = new Parser(buf, maxDepth);
  try {
    p.ws();
    const value = p.value(0);
    p.ws();
    if (p.i !== buf.length) return { ok: false, reason: `unexpected data after the JSON value at byte ${p.i}` };
    return { ok: true, value };
  } catch (err) {
    if (err instanceof JsonSyntaxError) return { ok: false, reason: err.message };
    throw err;
  }
}

class JsonSyntaxError extends Error {}

class Parser {
  i = 0;
  constructor(
    private readonly b: Buffer,
    private readonly maxDepth: number,
  ) {}

  private fail(what: string): never {
    throw new JsonSyntaxError(this.i >= this.b.length ? `JSON ends early (${what})` : `invalid JSON at byte ${this.i}: ${what}`);
  }

  ws(): void {
    while (this.i < this.b.length && WS.has(this.b[this.i]!)) this.i++;
  }

  value(depth: number): JsonValue {
    if (depth > this.maxDepth) this.fail(`nested deeper than ${this.maxDepth}`);
    const c = this.b[this.i];
    switch (c) {
      case 0x7b /* { */:
        return this.object(depth);
      case 0x5b /* [ */:
        return this.array(depth);
      case 0x22 /* " */:
        return { t: 'string', v: this.string() };
      case 0x74 /* t */:
        return this.literal('true', { t: 'bool', v: true });
      case 0x66 /* f */:
        return this.literal('false', { t: 'bool', v: false });
      case 0x6e /* n */:
        return this.literal('null', { t: 'null' });
      default:
        if (c === 0x2d || (c !== undefined && c >= 0x30 && c <= 0x39)) return this.number();
        return this.fail('expected a value');
    }
  }

  private literal(word: string, v: JsonValue): JsonValue {
    if (this.b.toString('latin1', this.i, this.i + word.length) !== word) this.fail(`expected ${word}`);
    this.i += word.length;
    return v;
  }

  private object(depth: number): JsonValue {
    this.i++;
    const members: [string, JsonValue][] = [];
    this.ws();
    if (this.b[this.i] === 0x7d) {
      this.i++;
      return { t: 'object', members };
    }
    for (;;) {
      this.ws();
      if (this.b[this.i] !== 0x22) this.fail('expected a member name');
      const key = this.string();
      this.ws();
      if (this.b[this.i] !== 0x3a) this.fail('expected ":"');
      this.i++;
      this.ws();
      members.push([key, this.value(depth + 1)]);
      this.ws();
      const c = this.b[this.i];
      this.i++;
      if (c === 0x2c) continue;
      if (c === 0x7d) return { t: 'object', members };
      this.i--;
      this.fail('expected "," or "}"');
    }
  }

  private array(depth: number): JsonValue {
    this.i++;
    const items: JsonValue[] = [];
    this.ws();
    if (this.b[this.i] === 0x5d) {
      this.i++;
      return { t: 'array', items };
    }
    for (;;) {
      this.ws();
      items.push(this.value(depth + 1));
      this.ws();
      const c = this.b[this.i];
      this.i++;
      if (c === 0x2c) continue;
      if (c === 0x5d) return { t: 'array', items };
      this.i--;
      this.fail('expected "," or "]"');
    }
  }

  private number(): JsonValue {
    const start = this.i;
    const b = this.b;
    const digits = () => {
      const s = this.i;
      while (this.i < b.length && b[this.i]! >= 0x30 && b[this.i]! <= 0x39) this.i++;
      return this.i - s;
    };
    if (b[this.i] === 0x2d) this.i++;
    if (b[this.i] === 0x30) this.i++;
    else if (digits() === 0) this.fail('expected a digit');
    if (b[this.i] === 0x2e) {
      this.i++;
      if (digits() === 0) this.fail('expected a digit after "."');
    }
    if (b[this.i] === 0x65 || b[this.i] === 0x45) {
      this.i++;
      if (b[this.i] === 0x2b || b[this.i] === 0x2d) this.i++;
      if (digits() === 0) this.fail('expected an exponent');
    }
    return { t: 'number', raw: b.toString('latin1', start, this.i) };
  }

  /**
   * A string literal. Invalid UTF-8 and lone surrogates become U+FFFD, as Go's decoder does; the
   * proxy forwards its own decoding, so dockerd sees the same text the proxy checked.
   */
  string(): string {
    const b = this.b;
    this.i++;
    let out = '';
    let run = this.i;
    for (;;) {
      if (this.i >= b.length) this.fail('unterminated string');
      const c = b[this.i]!;
      if (c === 0x22) {
        out += b.toString('utf8', run, this.i);
        this.i++;
        return out;
      }
      if (c < 0x20) this.fail('control character in a string');
      if (c !== 0x5c) {
        this.i++;
        continue;
      }
      out += b.toString('utf8', run, this.i);
      this.i++;
      const e = b[this.i];
      this.i++;
      switch (e) {
        case 0x22:
          out += '"';
          break;
        case 0x5c:
          out += '\\';
          break;
        case 0x2f:
          out += '/';
          break;
        case 0x62:
          out += '\b';
          break;
        case 0x66:
          out += '\f';
          break;
        case 0x6e:
          out += '\n';
          break;
        case 0x72:
          out += '\r';
          break;
        case 0x74:
          out += '\t';
          break;
        case 0x75: {
          const u = this.hex4();
          if (u >= 0xd800 && u < 0xdc00 && b[this.i] === 0x5c && b[this.i + 1] === 0x75) {
            const save = this.i;
            this.i += 2;
            const lo = this.hex4();
            if (lo >= 0xdc00 && lo < 0xe000) {
              out += String.fromCharCode(u, lo);
              break;
            }
            this.i = save;
          }
          out += u >= 0xd800 && u < 0xe000 ? '\ufffd' : String.fromCharCode(u);
          break;
        }
        default:
          this.i--;
          this.fail('invalid escape');
      }
      run = this.i;
    }
  }

  private hex4(): number {
    const s = this.b.toString('latin1', this.i, this.i + 4);
    if (!/^[0-9a-fA-F]{4}$/.test(s)) this.fail('invalid \\u escape');
    this.i += 4;
    return Number.parseInt(s, 16);
  }
}

/** Serializes a parsed (or built) value as compact JSON. */
export function serializeJson(v: JsonValue): string {
  switch (v.t) {
    case 'object':
      return `{${v.members.map(([k, x]) => `${JSON.stringify(k)}:${serializeJson(x)}`).join(',')}}`;
    case 'array':
      return `[${v.items.map(serializeJson).join(',')}]`;
    case 'string':
      return JSON.stringify(v.v);
    case 'number':
      return v.raw;
    case 'bool':
      return v.v ? 'true' : 'false';
    case 'null':
      return 'null';
  }
}

// ---------------------------------------------------------------------------------------------
// Field matching

const KELVIN = 0x212a;
const LONG_S = 0x17f;

/**
 * Whether Go's encoding/json matches `key` to the struct field named `field` (an ASCII name)
 * ignoring case: equal under Unicode simple case folding. The only non-ASCII runes whose fold
 * orbit holds an ASCII letter are K (KELVIN SIGN, with k) and ſ (LATIN SMALL LETTER LONG S, with
 * s): go1.19 encoding/json/fold.go (equalFoldRight), go1.21+ foldName.
 */
export function goFoldEqual(key: string, field: string): boolean {
  let j = 0;
  for (const ch of key) {
    if (j >= field.length) return false;
    const f = field.charCodeAt(j++);
    const r = ch.codePointAt(0)!;
    if (r === f) continue;
    const fl = f | 0x20;
    if (fl >= 0x61 && fl <= 0x7a) {
      if ((r | 0x20) === fl && r < 0x80) continue;
      if (fl === 0x6b && r === KELVIN) continue;
      if (fl === 0x73 && r === LONG_S) continue;
    }
    return false;
  }
  return j === field.length;
}

/** The field of `fields` Go would decode `key` into: an exact name first, else the first fold match. */
export function goFieldFor(key: string, fields: readonly string[]): string | undefined {
  if (fields.includes(key)) return key;
  return fields.find((f) => goFoldEqual(key, f));
}

// ---------------------------------------------------------------------------------------------
// Codecs

/** Why a body cannot be decoded; `at` names the field (HostConfig.Mounts[0].Source). */
export class DecodeError extends Error {
  constructor(
    readonly at: string,
    readonly reason: string,
  ) {
    super(`${at || 'the body'}: ${reason}`);
  }
}

export interface Codec<T> {
  /** Decodes a present, non-null value (null and absence are the caller's: both mean "unset"). */
  decode(v: JsonValue, at: string): T;
  encode(t: T): JsonValue;
  /** The JSON type name, for messages. */
  readonly what: string;
}

/** Members of a modelled struct that no modelled field claims, kept as sent. */
export const RAW = Symbol('raw members');

export type Struct<F> = { [K in keyof F]?: F[K] } & { [RAW]: [string, JsonValue][] };

type CodecsOf<F> = { [K in keyof F]: Codec<F[K]> };

function mismatch(at: string, want: string, v: JsonValue): DecodeError {
  const got = v.t === 'bool' ? 'boolean' : v.t;
  return new DecodeError(at, `expected ${want}, got ${got}`);
}

function join(at: string, key: string): string {
  return at ? `${at}.${key}` : key;
}

/**
 * A Go struct: the modelled fields by their Go (JSON) names; every other member is kept raw (in
 * order), so dockerd still reads the fields berth does not model. `others` names the struct's
 * unmodelled Go fields (a key that matches one exactly is theirs, even if it folds to a modelled
 * one); `deny` lists Go fields that must not appear (refused with `denyReason`).
 */
export function struct<F>(fields: CodecsOf<F>, opts: { deny?: readonly string[]; denyReason?: string; others?: readonly string[] } = {}): Codec<Struct<F>> {
  const names = Object.keys(fields) as (keyof F & string)[];
  const deny = opts.deny ?? [];
  const others = opts.others ?? [];
  const all = [...names, ...deny, ...others];
  return {
    what: 'an object',
    decode(v, at) {
      if (v.t !== 'object') throw mismatch(at, 'an object', v);
      const out = { [RAW]: [] } as unknown as Struct<F>;
      const seen = new Map<string, string>();
      for (const [key, value] of v.members) {
        const field = goFieldFor(key, all);
        if (field === undefined || others.includes(field)) {
          out[RAW].push([key, value]);
          continue;
        }
        if (deny.includes(field)) throw new DecodeError(join(at, key), opts.denyReason ?? 'not allowed here');
        const before = seen.get(field);
        if (before !== undefined) throw new DecodeError(join(at, key), `the field ${field} is given twice (also as "${before}"); dockerd would merge the two`);
        seen.set(field, key);
        if (value.t === 'null') continue;
        const codec = fields[field as keyof F];
        (out as Record<string, unknown>)[field] = codec.decode(value, join(at, field));
      }
      return out;
    },
    encode(s) {
      const members: [string, JsonValue][] = [];
      for (const name of names) {
        const x = s[name];
        if (x !== undefined) members.push([name, fields[name].encode(x as F[typeof name])]);
      }
      return { t: 'object', members: [...members, ...s[RAW]] };
    },
  };
}

/** A Go slice: null elements decode to the element's zero value, which callers see as undefined. */
export function list<T>(of: Codec<T>): Codec<(T | undefined)[]> {
  return {
    what: 'a list',
    decode(v, at) {
      if (v.t !== 'array') throw mismatch(at, 'a list', v);
      return v.items.map((x, i) => (x.t === 'null' ? undefined : of.decode(x, `${at}[${i}]`)));
    },
    encode(items) {
      return { t: 'array', items: items.map((x) => (x === undefined ? { t: 'null' } : of.encode(x))) };
    },
  };
}

/** A Go map with string keys; a repeated key is refused (Go keeps the last one). */
export function map<T>(of: Codec<T>): Codec<Map<string, T | undefined>> {
  return {
    what: 'an object',
    decode(v, at) {
      if (v.t !== 'object') throw mismatch(at, 'an object', v);
      const out = new Map<string, T | undefined>();
      for (const [key, value] of v.members) {
        if (out.has(key)) throw new DecodeError(`${at}[${JSON.stringify(key)}]`, 'a key given twice');
        out.set(key, value.t === 'null' ? undefined : of.decode(value, `${at}[${JSON.stringify(key)}]`));
      }
      return out;
    },
    encode(m) {
      return { t: 'object', members: [...m].map(([k, x]): [string, JsonValue] => [k, x === undefined ? { t: 'null' } : of.encode(x)]) };
    },
  };
}

export const str: Codec<string> = {
  what: 'a string',
  decode(v, at) {
    if (v.t !== 'string') throw mismatch(at, 'a string', v);
    return v.v;
  },
  encode: (s) => ({ t: 'string', v: s }),
};

export const bool: Codec<boolean> = {
  what: 'a boolean',
  decode(v, at) {
    if (v.t !== 'bool') throw mismatch(at, 'a boolean', v);
    return v.v;
  },
  encode: (b) => ({ t: 'bool', v: b }),
};

/** Any JSON value, kept as sent (a field berth passes on without reading). */
export const raw: Codec<JsonValue> = { what: 'a value', decode: (v) => v, encode: (v) => v };

/** Decodes a whole body (which must be one JSON value) with a codec. */
export function decodeBody<T>(body: Buffer, codec: Codec<T>): { ok: true; value: T } | { ok: false; reason: string } {
  const parsed = parseJson(body);
  if (!parsed.ok) return parsed;
  if (parsed.value.t === 'null') return { ok: false, reason: 'the body is null' };
  try {
    return { ok: true, value: codec.decode(parsed.value, '') };
  } catch (err) {
    if (err instanceof DecodeError) return { ok: false, reason: err.message };
    throw err;
  }
}
