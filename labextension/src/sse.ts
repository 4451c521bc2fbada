/**
 * Server-sent events read from a fetch response body.
 *
 * Hand-written rather than `EventSource` on purpose: an `EventSource` cannot send the
 * `Authorization: token ...` header JupyterLab's `ServerConnection` uses, nor be given the
 * offset to resume from in a way the server sees on the first request. The parser follows the
 * WHATWG event-stream rules the server uses (`id:`, `event:`, `data:` lines, comments, a blank
 * line ends an event); an event with a type but no data is still delivered (`event: end`).
 */

export interface SSEMessage {
  /** The `id:` of the event, or the last one seen before it (the resume point). */
  id: string;
  /** `message` unless the event named another type (`event: end`). */
  event: string;
  data: string;
}

export class SSEParser {
  constructor(private readonly onMessage: (m: SSEMessage) => void) {}

  /** Feed decoded text; complete events are delivered, a partial one is kept. */
  push(text: string): void {
    this._buffer += text;
    let start = 0;
    for (;;) {
      const nl = this._buffer.indexOf('\n', start);
      if (nl < 0) {
        break;
      }
      let line = this._buffer.slice(start, nl);
      if (line.endsWith('\r')) {
        line = line.slice(0, -1);
      }
      start = nl + 1;
      this._line(line);
    }
    this._buffer = this._buffer.slice(start);
  }

  /** The id of the last event seen (where a reconnect resumes). */
  get lastEventId(): string {
    return this._lastId;
  }

  private _line(line: string): void {
    if (line === '') {
      if (this._data.length > 0 || this._event !== '') {
        this.onMessage({
          id: this._lastId,
          event: this._event || 'message',
          data: this._data.join('\n')
        });
      }
      this._data = [];
      this._event = '';
      return;
    }
    if (line.startsWith(':')) {
      return; // a comment: keep-alive
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) {
      value = value.slice(1);
    }
    if (field === 'data') {
      this._data.push(value);
    } else if (field === 'event') {
      this._event = value;
    } else if (field === 'id' && !value.includes('\0')) {
      this._lastId = value;
    }
  }

  private _buffer = '';
  private _data: string[] = [];
  private _event = '';
  private _lastId = '';
}
