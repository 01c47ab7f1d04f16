/**
 * Names shared by the host's QEMU command line and the guest agent: the virtio-serial port that
 * carries the control channel (docs/control.md).
 */

/** The virtio-serial port name the agent looks for in /sys/class/virtio-ports/. */
export const CONTROL_PORT_NAME = 'berth.control';
