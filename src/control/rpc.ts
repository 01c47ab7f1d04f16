import { BerthError, type ErrorCode } from '../util/errors.js';
import type { Mux } from './mux.js';
import type { MuxStream } from './mux-stream.js';

/**
 * JSON request/response over a stream of the `rpc` service: the caller opens a stream with meta
 * `{method}`, writes the JSON params and ends its side; the callee answers one JSON document
 * `{ok:true,result}` or `{ok:false,error:{code,message,hint?}}` and ends. Both sides cap the
 * document at 1 MiB.
 */
const MAX_DOC = 1024 * 1024;

export type RpcHandler = (params: unknown) => Promise<unknown>;

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

export async function call(mux: Mux, method: string, params: unknown, timeoutMs: number): Promise<unknown> {
  const stream = await mux.open('rpc', { method });
  const timer = setTimeout(() => stream.destroy(new BerthError('AGENT_UNREACHABLE', `The guest agent did not answer ${method} within ${Math.round(timeoutMs / 1000)} s.`)), timeoutMs);
  try {
    stream.end(JSON.stringify(params ?? null));
    const body = await readAll(stream);
    let reply: { ok?: unknown; result?: unknown; error?: { code?: unknown; message?: unknown; hint?: unknown } };
    try {
      reply = JSON.parse(body.toString('utf8')) as typeof reply;
    } catch {
      throw new BerthError('MUX_PROTOCOL', `The guest agent sent an unreadable answer to ${method}.`);
    }
    if (reply.ok === true) return reply.result;
    const e = reply.error ?? {};
    throw new BerthError((typeof e.code === 'string' ? e.code : 'AGENT_UNREACHABLE') as ErrorCode, `The guest agent failed ${method}: ${typeof e.message === 'string' ? e.message : 'unknown error'}`, typeof e.hint === 'string' ? { hint: e.hint } : {});
  } finally {
    clearTimeout(timer);
  }
}

export function serveRpc(mux: Mux, handlers: Record<string, RpcHandler>): void {
  mux.handle('rpc', async (stream, meta) => {
    const method = typeof meta.method === 'string' ? meta.method : '';
    let reply: unknown;
    try {
      const handler = Object.prototype.hasOwnProperty.call(handlers, method) ? handlers[method] : undefined;
      if (!handler) throw Object.assign(new Error(`no such method ${JSON.stringify(method.slice(0, 64))}`), { code: 'USAGE' });
      const body = await readAll(stream);
      const params = body.length > 0 ? (JSON.parse(body.toString('utf8')) as unknown) : null;
      reply = { ok: true, result: await handler(params) };
    } catch (err) {
      const e = err as { code?: unknown; message?: unknown; hint?: unknown };
      reply = { ok: false, error: { code: typeof e.code === 'string' ? e.code : 'INTERNAL', message: String(e.message ?? err), ...(typeof e.hint === 'string' ? { hint: e.hint } : {}) } };
    }
    if (!stream.destroyed) stream.end(JSON.stringify(reply));
  });
}
