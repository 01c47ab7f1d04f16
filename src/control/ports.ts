/**
 * Names shared by the host's QEMU command line and the guest agent: the virtio-serial port that
 * carries the control channel (docs/control.md).
 */

/** The virtio-serial port name the agent looks for in /sys/class/virtio-ports/. */
export const CONTROL_PORT_NAME = 'berth.control';

/**
 * In the namespace backend (docs/namespace.md): where the host's run folder is bound inside the
 * namespace, and the control socket the host daemon listens on there and the agent dials.
 */
export const NAMESPACE_HOST_DIR = '/run/berth-host';
export const NAMESPACE_CONTROL_SOCKET = `${NAMESPACE_HOST_DIR}/control.sock`;
