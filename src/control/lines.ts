/**
 * Splits a byte stream into text lines with a cap on line length: a peer that never sends a newline
 * cannot make us buffer without bound (the oversized line is dropped, not the connection).
 */
export class LineSplitter {
  private parts: Buffer[] = [];
  private size = 0;
  private overflow = false;

  constructor(private readonly maxLine: number) {}

  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, start);
      if (nl < 0) break;
      const piece = chunk.subarray(start, nl);
      if (!this.overflow && this.size + piece.length <= this.maxLine) {
        this.parts.push(piece);
        lines.push(Buffer.concat(this.parts).toString('utf8'));
      }
      this.parts = [];
      this.size = 0;
      this.overflow = false;
      start = nl + 1;
    }
    const rest = chunk.subarray(start);
    if (rest.length > 0 && !this.overflow) {
      if (this.size + rest.length > this.maxLine) {
        this.overflow = true;
        this.parts = [];
        this.size = 0;
      } else {
        this.parts.push(Buffer.from(rest));
        this.size += rest.length;
      }
    }
    return lines;
  }
}
