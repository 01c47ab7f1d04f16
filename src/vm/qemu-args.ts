import type { Accelerator } from './accel-probe.js';
import { CONTROL_PORT_NAME } from '../control/ports.js';

/**
 * Everything needed to build QEMU's command line. Pure data so the argv can be unit-tested
 * (no `cache=unsafe`, an explicit `format=` on every drive: Lima GHSA-f7qw-jj9c-rpq9).
 */
/** The guest's network card and what it is plugged into (docs/network.md). */
export type VmNetwork =
  /** berth's translator: QEMU listens on a Unix socket, the translator connects. */
  | { kind: 'stream'; socket: string; mac: string; mtu: number }
  /** QEMU's built-in user network (libslirp), with `ports.extra` as hostfwd rules. */
  | { kind: 'user'; mac: string; forwards: { proto: 'tcp' | 'udp'; hostIp: string; hostPort: number; guestPort: number }[] }
  /** An external translator listening on a Unix socket (passt, for the benchmarks' anchors). */
  | { kind: 'stream-client'; socket: string; mac: string; mtu: number };

export interface VmConfig extends MachineSpec {
  network: VmNetwork;
  vmlinux: string;
  initramfs: string;
  rootfs: string;
  /** The engine version pack (squashfs), laid over the root by the initramfs. */
  pack: string;
  dataDisk: string;
  cmdline: string;
  qmpSocket: string;
  controlSocket: string;
  serialLog: string;
  pidFile: string;
  /** Marker placed in `-name` so a restarted daemon can recognise its own QEMU in /proc. */
  instanceTag: string;
  /** Files the guest reads through QEMU's fw_cfg (/sys/firmware/qemu_fw_cfg/by_name/<name>/raw). */
  fwCfgFiles?: { name: string; file: string }[];
}

/**
 * Builds the argv (without the binary).
 *
 * Machine: `q35` booting an uncompressed vmlinux through its PVH entry point (init after ~2.6 s on
 * TCG, against ~5 s with the compressed bzImage). Not `microvm`, although it boots ~0.2 s faster:
 * it has no HPET and no ACPI PM timer, and under TCG the kernel's PIT-only TSC calibration fails in
 * about half of the boots on a busy host ("tsc: Unable to calibrate against PIT"), after which the
 * guest hangs. q35 calibrates against its PM timer. See docs/vm.md for the measurements.
 */
export function buildQemuArgs(c: VmConfig): string[] {
  const args: string[] = [
    '-name', `berth,process=berth-vm,debug-threads=on`,
    ...machineArgs(c),
    '-chardev', `file,id=console,path=${opt(c.serialLog)}`,
    '-serial', 'chardev:console',
    ...kernelArgs(c.accelerator, c.vmlinux, c.initramfs, c.cmdline),
    '-drive', `if=none,id=root,file=${opt(c.rootfs)},format=raw,readonly=on`,
    '-device', 'virtio-blk-pci,drive=root,serial=berth-root',
    '-drive', `if=none,id=engine,file=${opt(c.pack)},format=raw,readonly=on`,
    '-device', 'virtio-blk-pci,drive=engine,serial=berth-engine',
    // writeback (QEMU's default cache mode) honours guest flushes: an fsync in the guest reaches
    // the host disk. discard lets fstrim in the guest give space back to the sparse qcow2.
    '-drive', `if=none,id=data,file=${opt(c.dataDisk)},format=qcow2,discard=unmap,detect-zeroes=unmap`,
    '-device', 'virtio-blk-pci,drive=data,serial=berth-data',
    ...networkArgs(c.network),
    '-device', 'virtio-rng-pci',
    '-device', 'virtio-serial-pci,max_ports=4',
    // QEMU listens; the daemon connects. QEMU keeps listening after a disconnect, so a restarted
    // daemon can reattach to a running VM.
    '-chardev', `socket,id=control,path=${opt(c.controlSocket)},server=on,wait=off`,
    '-device', `virtserialport,chardev=control,name=${CONTROL_PORT_NAME}`,
    '-chardev', `socket,id=qmp,path=${opt(c.qmpSocket)},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    ...(c.fwCfgFiles ?? []).flatMap((f) => ['-fw_cfg', `name=${opt(f.name)},file=${opt(f.file)}`]),
    '-pidfile', c.pidFile,
    // A UUID derived from the berth home identifies our own QEMU in /proc/<pid>/cmdline.
    '-uuid', uuidFromTag(c.instanceTag),
  ];
  return args;
}

/** The machine every berth guest runs on: the VM itself, the accelerator's boot probe and the bench floor. */
export interface MachineSpec {
  accelerator: Accelerator;
  cpus: number;
  memoryMiB: number;
  /** CPU model override (benchmarks and experiments); default `max` under TCG, `host` otherwise. */
  cpuModel?: string;
}

/** The CPU model a machine runs with. */
export function cpuModelFor(m: Pick<MachineSpec, 'accelerator' | 'cpuModel'>): string {
  return m.cpuModel ?? (m.accelerator === 'tcg' ? 'max' : 'host');
}

/** Machine, accelerator, CPU, memory, and no default devices or display. */
export function machineArgs(m: MachineSpec): string[] {
  const tcg = m.accelerator === 'tcg';
  return [
    '-machine', 'q35',
    // Multi-threaded TCG runs one host thread per vCPU.
    '-accel', tcg ? 'tcg,thread=multi' : m.accelerator,
    '-cpu', cpuModelFor(m),
    '-smp', String(m.cpus),
    '-m', `${m.memoryMiB}M`,
    '-nodefaults', '-no-user-config', '-display', 'none',
    // Guest reboot or panic ends QEMU: the daemon decides what happens next.
    '-no-reboot',
  ];
}

/** Direct kernel boot of the uncompressed vmlinux (PVH entry point) with the initramfs. */
export function kernelArgs(accelerator: Accelerator, vmlinux: string, initramfs: string, cmdline: string): string[] {
  return [
    '-kernel', vmlinux,
    '-initrd', initramfs,
    // Under TCG the TSCs of the vCPUs (host TSC reads) look unsynchronised to the kernel's check,
    // which would demote the clock to HPET (an MMIO exit per read); they are in fact consistent.
    '-append', accelerator === 'tcg' ? `${cmdline} tsc=reliable` : cmdline,
  ];
}

function networkArgs(n: VmNetwork): string[] {
  const netdev =
    n.kind === 'user'
      ? ['user,id=net0', ...n.forwards.map((f) => `hostfwd=${f.proto}:${f.hostIp}:${f.hostPort}-:${f.guestPort}`)].join(',')
      : // server=on for berth: QEMU (7.2 has no reconnect for a stream client) listens, and listens
        // again after a disconnect, so a restarted translator or daemon simply reconnects.
        `stream,id=net0,server=${n.kind === 'stream' ? 'on' : 'off'},addr.type=unix,addr.path=${opt(n.socket)}`;
  // host_mtu: the MTU the guest driver uses (VIRTIO_NET_F_MTU). romfile= : no iPXE option ROM; we
  // never network-boot, and SeaBIOS loading it costs ~1 s under TCG (init at 3.0 s instead of 4.0 s).
  const mtu = n.kind === 'user' ? '' : `,host_mtu=${n.mtu}`;
  return ['-netdev', netdev, '-device', `virtio-net-pci,netdev=net0,mac=${n.mac}${mtu},romfile=`];
}

/** QEMU's option parser splits on commas; a literal comma in a value is written twice. */
function opt(value: string): string {
  return value.replace(/,/g, ',,');
}

/**
 * Derives a stable UUID from the instance tag so `/proc/<pid>/cmdline` identifies which berth home
 * a QEMU belongs to without putting a long path in `-name`.
 */
export function uuidFromTag(tag: string): string {
  // FNV-1a over the tag, spread into 128 bits: identification, not security.
  const words: number[] = [];
  for (let seed = 0; seed < 4; seed++) {
    let h = 0x811c9dc5 ^ seed;
    for (let i = 0; i < tag.length; i++) {
      h ^= tag.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    words.push(h >>> 0);
  }
  const hex = words.map((w) => w.toString(16).padStart(8, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}
