import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseIp4, type Ip4 } from './address.js';
import { planFor, Policy, type Destination } from './policy.js';

/**
 * The guest is untrusted (docs/network.md "What the guest can reach on the host, and what it
 * cannot"; CVE-2025-9074 was a container reaching the engine API over the VM subnet). Each row of
 * these tables is an attack a container could try; the policy is the one place that decides.
 */

const ip = (s: string): Ip4 => parseIp4(s)!;
const PLAN = planFor('198.19.248.0/24');
const BERTH_PORTS = new Set([2375, 41234]);

function policy(o: { allowLinkLocal?: boolean; denied?: () => ReadonlySet<number> } = {}): Policy {
  return new Policy({ plan: PLAN, allowLinkLocal: o.allowLinkLocal ?? false, deniedHostPorts: o.denied ?? (() => BERTH_PORTS) });
}

const kind = (d: Destination): string => (d.kind === 'host' ? `host ${d.host}:${d.port}` : d.kind);

test('the plan: gateway .1, guest .2, host alias = last usable address; only /24 or larger', () => {
  assert.equal(PLAN.gateway, ip('198.19.248.1'));
  assert.equal(PLAN.guest, ip('198.19.248.2'));
  assert.equal(PLAN.hostAlias, ip('198.19.248.254'));
  const big = planFor('10.77.0.0/16');
  assert.equal(big.gateway, ip('10.77.0.1'));
  assert.equal(big.hostAlias, ip('10.77.255.254'));
  for (const bad of ['198.19.248.0/25', '198.19.248.1/24', '198.19.248.0', 'x/24', '300.1.1.0/24']) assert.throws(() => planFor(bad), bad);
});

test('the gateway refuses every TCP port but 53 (DNS) and every UDP port but 53 and 67 (DHCP)', () => {
  const p = policy();
  for (let port = 0; port <= 65535; port++) {
    const tcp = p.tcp(PLAN.gateway, port);
    const udp = p.udp(PLAN.gateway, port);
    assert.equal(tcp.kind, port === 53 ? 'dns' : 'refuse', `tcp/${port}`);
    assert.equal(udp.kind, port === 53 ? 'dns' : port === 67 ? 'dhcp' : 'refuse', `udp/${port}`);
  }
});

test('the host alias maps to 127.0.0.1, except berth\'s own TCP ports (read at each decision)', () => {
  let denied = new Set([2375]);
  const p = policy({ denied: () => denied });
  for (const port of [1, 22, 53, 80, 443, 3306, 5432, 8080, 65535]) {
    assert.equal(kind(p.tcp(PLAN.hostAlias, port)), `host 127.0.0.1:${port}`);
    assert.equal(kind(p.udp(PLAN.hostAlias, port)), `host 127.0.0.1:${port}`);
  }
  assert.equal(p.tcp(PLAN.hostAlias, 2375).kind, 'refuse', 'the engine API port');
  // The set is consulted at each connection: a port berth starts listening on later is covered.
  denied = new Set([2375, 9999]);
  assert.equal(p.tcp(PLAN.hostAlias, 9999).kind, 'refuse');
  denied = new Set();
  assert.equal(kind(p.tcp(PLAN.hostAlias, 2375)), 'host 127.0.0.1:2375');
  assert.equal(p.tcp(PLAN.hostAlias, 0).kind, 'refuse', 'port 0');
  assert.equal(p.udp(PLAN.hostAlias, 0).kind, 'refuse', 'port 0');
});

test('link-local 169.254.0.0/16 (cloud metadata) is refused unless allowLinkLocal', () => {
  const off = policy();
  const on = policy({ allowLinkLocal: true });
  for (const a of ['169.254.169.254', '169.254.0.1', '169.254.255.255', '169.254.170.2']) {
    assert.equal(off.tcp(ip(a), 80).kind, 'refuse', `tcp ${a}`);
    assert.equal(off.udp(ip(a), 53).kind, 'refuse', `udp ${a}`);
    assert.equal(kind(on.tcp(ip(a), 80)), `host ${a}:80`);
  }
  // Neighbours of the range are ordinary addresses.
  assert.equal(off.tcp(ip('169.253.255.255'), 80).kind, 'host');
  assert.equal(off.tcp(ip('169.255.0.0'), 80).kind, 'host');
});

test('attack table: loopback, 0.0.0.0/8, multicast, broadcast and the rest of the berth subnet are refused (with or without allowLinkLocal)', () => {
  const rows: Array<[string, number]> = [
    ['127.0.0.1', 80], // the host's loopback is reached through the host alias only (and its deny list)
    ['127.0.0.1', 2375],
    ['127.1.2.3', 22],
    ['127.255.255.255', 80],
    ['0.0.0.0', 80], // "this host" on Linux: connecting to 0.0.0.0 reaches the loopback
    ['0.1.2.3', 80],
    ['224.0.0.1', 80],
    ['224.0.0.251', 5353],
    ['239.255.255.250', 1900],
    ['255.255.255.255', 80],
    ['198.19.248.0', 80], // network address
    ['198.19.248.2', 22], // the guest itself
    ['198.19.248.3', 80], // a container or another VM address
    ['198.19.248.100', 2375],
    ['198.19.248.253', 80],
    ['198.19.248.255', 80], // subnet broadcast
  ];
  for (const allowLinkLocal of [false, true]) {
    const p = policy({ allowLinkLocal });
    for (const [a, port] of rows) {
      assert.equal(p.tcp(ip(a), port).kind, 'refuse', `tcp ${a}:${port}`);
      assert.equal(p.udp(ip(a), port).kind, 'refuse', `udp ${a}:${port}`);
    }
  }
});

test('DHCP is served on the gateway and to the limited broadcast only; broadcast to other ports is refused', () => {
  const p = policy();
  assert.equal(p.udp(ip('255.255.255.255'), 67).kind, 'dhcp');
  assert.equal(p.udp(ip('255.255.255.255'), 68).kind, 'refuse');
  assert.equal(p.tcp(ip('255.255.255.255'), 67).kind, 'refuse');
  assert.equal(p.udp(ip('198.19.248.255'), 67).kind, 'refuse', 'subnet broadcast is not the DHCP server');
  assert.equal(p.udp(ip('8.8.8.8'), 67).kind, 'host', 'DHCP to an outside server is just UDP');
});

test('ordinary destinations pass through unchanged', () => {
  const p = policy();
  const rows: Array<[string, number]> = [
    ['1.1.1.1', 443],
    ['8.8.8.8', 53],
    ['10.0.0.1', 22],
    ['172.17.0.2', 80],
    ['192.168.1.10', 2375], // the host's LAN address is the host's business (its firewall applies)
    ['198.19.249.1', 80], // just outside the /24
    ['198.18.0.1', 80],
    ['100.64.0.1', 80],
    ['223.255.255.255', 80],
  ];
  for (const [a, port] of rows) {
    assert.equal(kind(p.tcp(ip(a), port)), `host ${a}:${port}`);
    assert.equal(kind(p.udp(ip(a), port)), `host ${a}:${port}`);
  }
});

test('on another subnet the same rules follow the plan', () => {
  const plan = planFor('10.77.0.0/16');
  const p = new Policy({ plan, allowLinkLocal: false, deniedHostPorts: () => new Set([2375]) });
  assert.equal(p.tcp(ip('10.77.0.1'), 53).kind, 'dns');
  assert.equal(p.tcp(ip('10.77.0.1'), 80).kind, 'refuse');
  assert.equal(kind(p.tcp(ip('10.77.255.254'), 80)), 'host 127.0.0.1:80');
  assert.equal(p.tcp(ip('10.77.255.254'), 2375).kind, 'refuse');
  assert.equal(p.tcp(ip('10.77.3.4'), 80).kind, 'refuse');
  assert.equal(p.tcp(ip('198.19.248.254'), 80).kind, 'host', 'the default subnet is nothing special here');
  assert.equal(kind(p.tcp(ip('198.19.248.254'), 80)), 'host 198.19.248.254:80');
});
