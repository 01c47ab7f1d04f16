/**
 * Progress events for long operations (image build, VM start, stop). The daemon streams them to the
 * CLI as JSON lines; the CLI renders them as "step ... done (1.2 s)" lines or passes them through
 * with --json.
 */

export type ProgressEvent =
  /** A named step began. `id` is stable (e.g. "image.download"); `title` is for humans. */
  | { type: 'step-begin'; id: string; title: string; at: number }
  /** A step ended; `ms` is its duration. `detail` is a short human note ("86 packages, 112 MB"). */
  | { type: 'step-end'; id: string; ms: number; ok: boolean; detail?: string; at: number }
  /** Fractional progress inside a step (downloads). `done`/`total` in the step's own unit. */
  | { type: 'step-progress'; id: string; done: number; total: number; unit?: string; at: number }
  /** A note or warning that the user should see (e.g. "KVM unusable, falling back to TCG"). */
  | { type: 'note'; level: 'info' | 'warn'; message: string; at: number };

export type ProgressListener = (event: ProgressEvent) => void;

export const noProgress: ProgressListener = () => {};

/**
 * Runs `fn` as a named step, emitting begin/end events with its duration.
 * `fn` may return a detail string via the `setDetail` callback.
 */
export async function step<T>(
  emit: ProgressListener,
  id: string,
  title: string,
  fn: (setDetail: (detail: string) => void) => Promise<T>,
): Promise<T> {
  const start = performance.now();
  let detail: string | undefined;
  emit({ type: 'step-begin', id, title, at: Date.now() });
  try {
    const result = await fn((d) => {
      detail = d;
    });
    emit({ type: 'step-end', id, ms: Math.round(performance.now() - start), ok: true, at: Date.now(), ...(detail ? { detail } : {}) });
    return result;
  } catch (err) {
    emit({ type: 'step-end', id, ms: Math.round(performance.now() - start), ok: false, at: Date.now(), ...(detail ? { detail } : {}) });
    throw err;
  }
}
