import { decodeBody, parseJson, serializeJson, type Codec } from './go-json.js';
import { containerCreateCodec, pluginSetCodec, privilegesCodec, serviceSpecCodec, volumeCreateCodec, pluginState, type PluginState } from './bodies.js';
import { checkContainerCreate, checkPluginSet, checkPluginSettings, checkPrivileges, checkServiceSpec, checkVolumeCreate, refusalMessage, type Decision, type MountPolicy } from './mount-policy.js';
import { dockerJson, type StreamOpener } from './engine-client.js';
import { bytesToText } from './target.js';
import type { RouteMatch } from './routes.js';
import type { BodyKind } from './route-table.js';

/**
 * The bodies the proxy buffers (docs/docker-proxy.md step 4): checked JSON is decoded into a
 * typed value with Go's rules, checked, and serialized again from that value; opaque JSON must
 * be one well-formed JSON value and is passed on as sent.
 */
export type BodyDecision = { ok: true; body: Buffer } | { ok: false; status: number; message: string };

export interface DecideInput {
  body: Buffer;
  match: RouteMatch;
  policy: MountPolicy;
  /** Opens a stream to dockerd, for what a decision must look up (a plugin's config). */
  open: StreamOpener;
}

export type Decider = (input: DecideInput) => Promise<BodyDecision>;

function bad(message: string): BodyDecision {
  return { ok: false, status: 400, message };
}

/** A checked JSON body: decode, check (which may rewrite paths), encode. An empty body passes as empty. */
function checked<T>(codec: Codec<T>, check: (v: T, input: DecideInput) => Decision | Promise<Decision>): Decider {
  return async (input) => {
    if (input.body.length === 0) return { ok: true, body: input.body };
    const decoded = decodeBody(input.body, codec);
    if (!decoded.ok) return bad(`berth: the request body cannot be read as dockerd would read it: ${decoded.reason}.`);
    const d = await check(decoded.value, input);
    if (!d.ok) return bad(refusalMessage(d, input.policy));
    return { ok: true, body: Buffer.from(serializeJson(codec.encode(decoded.value))) };
  };
}

const opaqueJson: Decider = async ({ body }) => {
  if (body.length === 0) return { ok: true, body };
  const p = parseJson(body);
  return p.ok ? { ok: true, body } : bad(`berth: the request body is not one JSON value: ${p.reason}.`);
};

/** The plugin as dockerd holds it (GET /plugins/{name}/json), as far as its paths go. */
async function inspectPlugin(input: DecideInput): Promise<PluginState> {
  const name = bytesToText(input.match.vars.name ?? '');
  const info = (await dockerJson(input.open, 'GET', `/plugins/${encodeURIComponent(name)}/json`)) as Record<string, unknown> | undefined;
  return pluginState(info);
}

/**
 * POST /plugins/{name}/enable: the plugin runs with the mounts and devices of its settings (its
 * config's, changed by `set`). dockerd's own consent check at pull compares all privileges but
 * the first (moby plugin/backend_linux.go, the loop over sorted privileges starts at 1), so the
 * proxy checks what the plugin will really get, here, whatever way it was installed.
 */
const pluginEnable: Decider = async (input) => {
  const d = checkPluginSettings(await inspectPlugin(input), input.policy);
  return d.ok ? { ok: true, body: Buffer.alloc(0) } : bad(refusalMessage(d, input.policy));
};

const DECIDERS: Partial<Record<BodyKind, Decider>> = {
  json: opaqueJson,
  'container-create': checked(containerCreateCodec, (v, i) => checkContainerCreate(v, i.policy)),
  'volume-create': checked(volumeCreateCodec, (v, i) => checkVolumeCreate(v, i.policy)),
  'service-spec': checked(serviceSpecCodec, (v, i) => checkServiceSpec(v, i.policy)),
  'plugin-privileges': checked(privilegesCodec, (v, i) => checkPrivileges(v, i.policy)),
  'plugin-set': checked(pluginSetCodec, async (v, i) => checkPluginSet(v, await inspectPlugin(i), i.policy)),
  'plugin-enable': pluginEnable,
};

export function decideJsonBody(kind: BodyKind): Decider | undefined {
  return DECIDERS[kind];
}
