import { BerthError } from '../util/errors.js';
import { AGENT_API, isAgentMethod, parseAgentError, type AgentMethod, type ParamsOf, type ResultOf } from './agent-api.js';
import type { Mux } from './mux.js';
import type { MuxStream } from './mux-stream.js';

/**
 * JSON request/response over a stream of the `rpc` service (docs/control.md "RPC"): the caller
 * opens a stream with meta `{method}`, writes the JSON params and ends its side; the callee
 * answers one JSON document `{ok:true,result}` or `{ok:false,error:{code,message,hint?}}` and
 * ends. Both sides cap the document at 1 MiB. The methods, their params and results are the
 * table in agent-api.ts: the host's `call` checks every result with it, `serveAgentApi` checks
 * every request's params before its handler runs.
 */
const MAX_DOC = 1024 * 1024;

/** One handler per agent method; each gets params its table entry has checked. */
export type AgentHandlers = { readonly [M in AgentMethod]: (params: ParamsOf<M>) => Promise<ResultOf<M>> };

function readAll(stream: MuxStream): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let n = 0;
    stream.on('data', (d: Buffer) => {
      n += d.length;
      if (n > MAX_DOC) {
        stream.destroy(new BerthError('MUX_PROTOCOL', `RPC document larger than ${MAX_DOC} bytes`));
        return;
      }
      parts.push(d);
    });
    stream.on('end', () => resolve(Buffer.concat(parts, n)));
    stream.on('error', reject);
  });
}

/**
 * Calls `method` on the agent and resolves with its result as the table's parser returns it.
 * Rejects with AGENT_UNREACHABLE after `timeoutMs`, MUX_PROTOCOL for an answer that is not JSON
 * or a result the parser refuses, and parseAgentError's error for an error answer.
 */
export async function call<M extends AgentMethod>(mux: Mux, method: M, params: ParamsOf<M>, timeoutMs: number): Promise<ResultOf<M>> {
  const reply = await exchange(mux, method, params, timeoutMs);
  if (reply.ok !== true) throw parseAgentError(method, reply.error);
  return AGENT_API[method].result(reply.result);
}

async function exchange(mux: Mux, method: string, params: unknown, timeoutMs: number): Promise<{ ok?: unknown; result?: unknown; error?: unknown }> {
  const stream = await mux.open('rpc', { method });
  const timer = setTimeout(() => stream.destroy(new BerthError('AGENT_UNREACHABLE', `The guest agent did not answer ${method} within ${Math.round(timeoutMs / 1000)} s.`)), timeoutMs);
  try {
    stream.end(JSON.stringify(params ?? null));
    const body = await readAll(stream);
    let reply: unknown;
    try {
      reply = JSON.parse(body.toString('utf8'));
    } catch {
      throw new BerthError('MUX_PROTOCOL', `The guest agent sent an unreadable answer to ${method}.`);
    }
    if (typeof reply !== 'object' || reply === null || Array.isArray(reply)) throw new BerthError('MUX_PROTOCOL', `The guest agent's answer to ${method} is not an object.`);
    return reply;
  } finally {
    clearTimeout(timer);
  }
}

/** Answers the host's `rpc` streams with `handlers`; params that the table refuses answer USAGE. */
export function serveAgentApi(mux: Mux, handlers: AgentHandlers): void {
  mux.handle('rpc', async (stream, meta) => {
    const method = typeof meta.method === 'string' ? meta.method : '';
    let reply: unknown;
    try {
      if (!isAgentMethod(method)) throw Object.assign(new Error(`no such method ${JSON.stringify(method.slice(0, 64))}`), { code: 'USAGE' });
      const body = await readAll(stream);
      const params: unknown = body.length > 0 ? JSON.parse(body.toString('utf8')) : null;
      reply = { ok: true, result: await dispatch(handlers, method, params) };
    } catch (err) {
      const e = (err ?? {}) as { code?: unknown; message?: unknown; hint?: unknown };
      reply = { ok: false, error: { code: typeof e.code === 'string' ? e.code : 'INTERNAL', message: String(e.message ?? err), ...(typeof e.hint === 'string' ? { hint: e.hint } : {}) } };
    }
    if (!stream.destroyed) stream.end(JSON.stringify(reply));
  });
}

function dispatch<M extends AgentMethod>(handlers: AgentHandlers, method: M, raw: unknown): Promise<ResultOf<M>> {
  const params = AGENT_API[method].params(raw);
  return handlers[method](params);
}
