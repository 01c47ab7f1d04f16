import { parentPort, workerData } from 'node:worker_threads';
import { formatIp4, parseMac } from './address.js';
import { DhcpServer } from './dhcp-server.js';
import { DnsServer, readHostResolvConf } from './dns-server.js';
import { GuestLink } from './guest-link.js';
import { planFor } from './policy.js';
import { PortForwarder } from './port-forwarder.js';
import { Stack, type NetLog } from './stack.js';
import type { FromWorker, NetWorkerConfig, ToWorker } from './worker-protocol.js';

/**
 * The translator's worker thread (docs/network.md "Process model and failure"): owns the link to
 * QEMU, the stack, and the published-port listeners. It talks to the daemon only through
 * messages (worker-protocol.ts); an exception here ends this thread, and the daemon restarts it.
 */
const cfg = workerData as NetWorkerConfig;
const port = parentPort!;
const post = (m: FromWorker) => port.postMessage(m);
const log: NetLog = (level, msg, fields) => post({ type: 'log', level, msg, ...(fields ? { fields } : {}) });

const plan = planFor(cfg.subnet);
const mac = parseMac(cfg.translatorMac)!;
const resolv = readHostResolvConf();
const dns = new DnsServer({
  localNames: new Map([
    ['host.docker.internal', formatIp4(plan.hostAlias)],
    ['gateway.docker.internal', formatIp4(plan.gateway)],
  ]),
  loopbackAlias: formatIp4(plan.hostAlias),
  log,
});
const dhcp = new DhcpServer(
  {
    serverIp: plan.gateway,
    subnetMask: plan.subnet.mask,
    router: plan.gateway,
    dnsServers: [plan.gateway],
    clientIp: plan.guest,
    mtu: cfg.mtu,
    searchList: resolv.search,
    ...(resolv.search[0] ? { domainName: resolv.search[0] } : {}),
    leaseSeconds: 0xffffffff,
    clientMac: parseMac(cfg.guestMac)!,
  },
  log,
);
const denied = new Set(cfg.deniedHostPorts);

let stack: Stack;
const link = new GuestLink(cfg.socketPath, {
  frame: (f) => stack.input(f),
  endBatch: () => stack.endBatch(),
  drain: () => stack.linkDrained(),
  connected: (up) => {
    log('info', up ? 'connected to the VM network port' : 'VM network port disconnected');
    post({ type: 'link', up });
  },
  error: (reason) => log('warn', 'framing error from QEMU; reconnecting', { reason }),
});
stack = new Stack({
  plan,
  mtu: cfg.mtu,
  mac,
  allowLinkLocal: cfg.allowLinkLocal,
  deniedHostPorts: () => denied,
  ...(cfg.fileServerSocket ? { fileServerSocket: cfg.fileServerSocket } : {}),
  dns,
  dhcp,
  emit: (f) => link.send(f),
  isLinkBlocked: () => link.blocked,
  log,
});
const forwarder = new PortForwarder(stack, log, (states) => post({ type: 'forward-states', states }));

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'forwards':
      forwarder.set(m.forwards);
      break;
    case 'stats':
      post({ type: 'stats', id: m.id, stats: { ...stack.stats(), link: { ...link.counters, up: link.isUp } } });
      break;
    case 'stop':
      forwarder.closeAll();
      stack.close();
      link.stop();
      post({ type: 'stopped' });
      port.close();
      break;
  }
});

link.start();
