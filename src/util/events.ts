import type { EventEmitter } from 'node:events';

/**
 * Resolves true when `emitter` emits `event` within `timeoutMs`, false otherwise; the listener is
 * removed either way. For "wait for a process to exit, but not forever".
 */
export function emittedWithin(emitter: EventEmitter, event: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      emitter.off(event, done);
      resolve(false);
    }, timeoutMs);
    emitter.once(event, done);
  });
}
