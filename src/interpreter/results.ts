// A Jupyter MIME bundle to the SDK's `result` event: known types become named fields, the
// rest goes into `extra` by MIME type (contract §2.5).
import type { OutEvent } from './kernel.js';

const FIELDS: Record<string, string> = {
  'text/plain': 'text',
  'text/html': 'html',
  'text/markdown': 'markdown',
  'image/svg+xml': 'svg',
  'image/png': 'png',
  'image/jpeg': 'jpeg',
  'application/pdf': 'pdf',
  'text/latex': 'latex',
  'application/json': 'json',
  'application/javascript': 'javascript',
  'e2b/data': 'data',
  'e2b/chart': 'chart',
};

export function resultEvent(data: Record<string, unknown>, isMain: boolean): OutEvent {
  const event: OutEvent = { type: 'result', is_main_result: isMain, extra: {} };
  for (const [mime, value] of Object.entries(data)) {
    const field = FIELDS[mime];
    if (!field) {
      event.extra[mime] = value;
      continue;
    }
    if (value === null || value === undefined) continue;
    event[field] = field === 'text' && typeof value === 'string' ? unquote(value) : value;
  }
  return event;
}

/** A string's repr ('abc' or "abc") arrives as the string itself, as upstream sends it. */
function unquote(text: string): string {
  if (text.length >= 2 && (text[0] === "'" || text[0] === '"') && text[text.length - 1] === text[0]) return text.slice(1, -1);
  return text;
}

/** One NDJSON line, pure ASCII (the SDK decodes each network chunk on its own). */
export function encodeEvent(event: unknown): string {
  return JSON.stringify(event).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`) + '\n';
}
