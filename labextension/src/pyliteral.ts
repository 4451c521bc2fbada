/**
 * Notebook parameters as the `parameters` cell writes them (`name = <Python literal>`), read into
 * JSON values for `POST /ds-jobs/notebooks/run`: None, bools, numbers, strings, lists, tuples
 * (as lists) and dicts. Hand-written because the values are Python, not JSON (`'text'`, `True`,
 * `(1, 2)`); what does not parse as a literal is sent as the text itself (as `-p` does).
 */

export type JSONValue = null | boolean | number | string | JSONValue[] | { [key: string]: JSONValue };

class ParseError extends Error {}

class Parser {
  constructor(private readonly s: string) {}

  parse(): JSONValue {
    const v = this.value();
    this.ws();
    if (this.i !== this.s.length) {
      throw new ParseError('trailing text');
    }
    return v;
  }

  private ws(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i])) {
      this.i++;
    }
  }

  private value(): JSONValue {
    this.ws();
    const c = this.s[this.i];
    if (c === '[' || c === '(') {
      return this.seq(c === '[' ? ']' : ')');
    }
    if (c === '{') {
      return this.dict();
    }
    if (c === '"' || c === "'") {
      return this.str();
    }
    const m = /^(?:True|False|None|null|true|false|[-+]?(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][-+]?\d+)?|[-+]?inf|nan)(?![\w.])/.exec(
      this.s.slice(this.i)
    );
    if (!m) {
      throw new ParseError('not a literal');
    }
    this.i += m[0].length;
    switch (m[0]) {
      case 'True':
      case 'true':
        return true;
      case 'False':
      case 'false':
        return false;
      case 'None':
      case 'null':
        return null;
    }
    const n = Number(m[0].replace(/_/g, ''));
    if (!Number.isFinite(n)) {
      throw new ParseError('not a JSON number');
    }
    return n;
  }

  private seq(close: string): JSONValue[] {
    this.i++;
    const out: JSONValue[] = [];
    for (;;) {
      this.ws();
      if (this.s[this.i] === close) {
        this.i++;
        return out;
      }
      out.push(this.value());
      this.ws();
      if (this.s[this.i] === ',') {
        this.i++;
      } else if (this.s[this.i] !== close) {
        throw new ParseError(`expected , or ${close}`);
      }
    }
  }

  private dict(): { [key: string]: JSONValue } {
    this.i++;
    const out: { [key: string]: JSONValue } = {};
    for (;;) {
      this.ws();
      if (this.s[this.i] === '}') {
        this.i++;
        return out;
      }
      const key = this.value();
      if (key !== null && typeof key === 'object') {
        throw new ParseError('a key must be a scalar');
      }
      this.ws();
      if (this.s[this.i] !== ':') {
        throw new ParseError('expected :');
      }
      this.i++;
      out[String(key)] = this.value();
      this.ws();
      if (this.s[this.i] === ',') {
        this.i++;
      } else if (this.s[this.i] !== '}') {
        throw new ParseError('expected , or }');
      }
    }
  }

  private str(): string {
    const q = this.s[this.i];
    const triple = this.s.startsWith(q.repeat(3), this.i);
    const end = triple ? q.repeat(3) : q;
    this.i += end.length;
    let out = '';
    while (this.i < this.s.length) {
      if (this.s.startsWith(end, this.i)) {
        this.i += end.length;
        return out;
      }
      const c = this.s[this.i++];
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = this.s[this.i++];
      const simple: Record<string, string> = { n: '\n', t: '\t', r: '\r', '\\': '\\', "'": "'", '"': '"', '0': '\0' };
      if (e in simple) {
        out += simple[e];
      } else if (e === 'u' || e === 'x') {
        const len = e === 'u' ? 4 : 2;
        out += String.fromCharCode(parseInt(this.s.slice(this.i, this.i + len), 16));
        this.i += len;
      } else {
        out += '\\' + e;
      }
    }
    throw new ParseError('unterminated string');
  }

  private i = 0;
}

/** `text` as a JSON value if it is a Python (or JSON) literal, else the text itself. */
export function literalValue(text: string): JSONValue {
  try {
    return new Parser(text.trim()).parse();
  } catch {
    return text;
  }
}

/** A JSON value written as a Python literal (the prefill of a parameter edited before). */
export function pythonLiteral(value: JSONValue): string {
  if (value === null) {
    return 'None';
  }
  if (typeof value === 'boolean') {
    return value ? 'True' : 'False';
  }
  if (typeof value === 'number') {
    return String(value);
  }
  if (typeof value === 'string') {
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(pythonLiteral).join(', ')}]`;
  }
  return `{${Object.entries(value)
    .map(([k, v]) => `${JSON.stringify(k)}: ${pythonLiteral(v)}`)
    .join(', ')}}`;
}

export interface NotebookParameter {
  name: string;
  /** The value as the cell writes it (Python source). */
  source: string;
  /** The comment after it, if any. */
  comment: string;
}

/** The characters of `text` outside string literals, with their indices. */
function* unquoted(text: string): Generator<[number, string]> {
  let quote = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === '\\') {
        i++;
      } else if (c === quote) {
        quote = '';
      }
    } else if (c === '"' || c === "'") {
      quote = c;
    } else {
      yield [i, c];
    }
  }
}

/** Where a `#` outside quotes starts on `line`, or -1. */
function commentStart(line: string): number {
  for (const [i, c] of unquoted(line)) {
    if (c === '#') {
      return i;
    }
  }
  return -1;
}

/** How many brackets `text` leaves open (outside quotes). */
function depth(text: string): number {
  let d = 0;
  for (const [, c] of unquoted(text)) {
    if ('([{'.includes(c)) {
      d++;
    } else if (')]}'.includes(c)) {
      d--;
    }
  }
  return d;
}

/** The `name = value` assignments of a `parameters` cell, in order (a value may span lines). */
export function parametersOf(source: string): NotebookParameter[] {
  const lines = source.split('\n');
  const out: NotebookParameter[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)\s*(.*)$/.exec(lines[i]);
    if (!m) {
      continue;
    }
    let rest = m[2];
    let comment = '';
    while (depth(rest) > 0 && i + 1 < lines.length) {
      rest += '\n' + lines[++i];
    }
    const last = rest.lastIndexOf('\n') + 1;
    const hash = commentStart(rest.slice(last));
    if (hash >= 0) {
      comment = rest.slice(last + hash + 1).trim();
      rest = rest.slice(0, last + hash);
    }
    out.push({ name: m[1], source: rest.trim(), comment });
  }
  return out;
}
