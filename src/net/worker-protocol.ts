import type { ForwardSpec, ForwardState } from './port-forwarder.js';
import type { StackStats } from './stack.js';
import type { WorkerLogRecord } from '../util/supervised-worker.js';

/** Messages between the daemon (NetService) and the translator's worker thread. */

export interface NetWorkerConfig {
  /** QEMU's `-netdev stream` Unix socket. */
  socketPath: string;
  subnet: string;
  mtu: number;
  allowLinkLocal: boolean;
  /** The translator's MAC and the VM's (static DHCP lease). */
  translatorMac: string;
  guestMac: string;
  /** Host TCP ports of berth itself that the guest must not reach through the host alias. */
  deniedHostPorts: number[];
  /** Unix socket of the 9P file server (gateway:564 leads there), when folders are shared. */
  fileServerSocket?: string;
}

export type ToWorker =
  | { type: 'forwards'; forwards: ForwardSpec[] }
  | { type: 'stats'; id: number }
  | { type: 'stop' };

export type FromWorker =
  | { type: 'link'; up: boolean }
  | { type: 'forward-states'; states: ForwardState[] }
  | { type: 'stats'; id: number; stats: StackStats & { link: { sent: number; received: number; up: boolean } } }
  | WorkerLogRecord
  | { type: 'stopped' };
