/**
 * Records inside an `exec` stream (docs/control.md, "Exec sub-protocol"):
 * [type u8][length u32 BE][payload]. The decoder is the only parser of these bytes; it caps a record
 * at 1 MiB and throws on an unknown type, which ends the exec session.
 */
export enum ExecRecordType {
  Stdin = 0,
  Stdout = 1,
  Stderr = 2,
  Resize = 3,
  Exit = 4,
  StdinEof = 5,
}

export interface ExecRecord {
  type: ExecRecordType;
  payload: Buffer;
}

const HEADER = 5;
export const MAX_EXEC_RECORD = 1024 * 1024;

export function encodeExecRecord(type: ExecRecordType, payload: Buffer): Buffer {
  const out = Buffer.alloc(HEADER + payload.length);
  out[0] = type;
  out.writeUInt32BE(payload.length, 1);
  payload.copy(out, HEADER);
  return out;
}

export class ExecRecordDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): ExecRecord[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: ExecRecord[] = [];
    let off = 0;
    while (this.buf.length - off >= HEADER) {
      const type = this.buf[off]!;
      if (ExecRecordType[type] === undefined) throw new Error(`unknown exec record type ${type}`);
      const len = this.buf.readUInt32BE(off + 1);
      if (len > MAX_EXEC_RECORD) throw new Error(`exec record of ${len} bytes exceeds ${MAX_EXEC_RECORD}`);
      if (this.buf.length - off < HEADER + len) break;
      out.push({ type, payload: this.buf.subarray(off + HEADER, off + HEADER + len) });
      off += HEADER + len;
    }
    this.buf = off >= this.buf.length ? Buffer.alloc(0) : Buffer.from(this.buf.subarray(off));
    return out;
  }
}
