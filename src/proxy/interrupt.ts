// Cutting a sandbox's open exchanges when it stops serving (pause, kill, delete): the client
// of a request in flight reads why, in its own protocol, instead of a broken connection.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendJson } from './replies.js';
import type { Exchange } from './types.js';

/** Why a sandbox stopped serving, as cut() tells clients. */
export type InterruptReason = 'paused' | 'killed';

/**
 * A Connect end-of-stream message (flag 0x02, always JSON) carrying an error: a client
 * reading a server stream sees the reason instead of a broken connection.
 */
export function connectEndStreamError(code: string, message: string): Buffer {
  const body = Buffer.from(JSON.stringify({ error: { code, message } }));
  const head = Buffer.alloc(5);
  head.writeUInt8(0x02, 0);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

/**
 * Ends every exchange of a set: with the reason where the exchange can tell it, else destroyed.
 * A kill ends server streams as E2B's does: the connection drops (no end-stream message), the
 * SDK probes /health, sees the 502 of a sandbox that is gone, and reports "The sandbox was
 * killed or reached its end of life" as a TimeoutError. A pause tells its own reason (the SDK
 * reads a Connect `unavailable` as a TimeoutError too), which also keeps the SDK's probe from
 * waking an auto-resuming sandbox it just saw paused.
 */
export function interruptAll(set: Iterable<Exchange>, reason?: InterruptReason): void {
  const message = reason && `the sandbox was ${reason} while the request was in flight`;
  for (const ex of set) {
    if (message && ex.interrupt) ex.interrupt(message, reason === 'killed');
    else ex.destroy();
  }
}

/** The exchange of one proxied HTTP request: destroy() breaks it, interrupt() answers the client. */
export function httpExchange(sandboxId: string, req: IncomingMessage, res: ServerResponse): Exchange {
  return {
    destroyed: false,
    destroy() {
      this.destroyed = true;
      this.upstream?.destroy();
      res.destroy();
      req.socket?.destroy();
    },
    interrupt(message: string, dropStreams = false) {
      this.destroyed = true;
      this.upstreamResponse?.unpipe(res);
      const connect = /^application\/(connect\+|json|proto)/.test(String(req.headers['content-type'] ?? ''));
      if (!res.headersSent && !res.destroyed) {
        // not answered yet: a Connect error (unary form) or the data plane's JSON error
        const body = connect ? JSON.stringify({ code: 'unavailable', message }) : JSON.stringify({ sandboxId, message, code: 502 });
        sendJson(res, connect ? 503 : 502, body, { Connection: 'close' });
      } else if (!dropStreams && !res.destroyed && /^application\/connect\+/.test(String(this.upstreamResponse?.headers['content-type'] ?? ''))) {
        // a server stream under way: end it with an error message of the stream's own
        res.end(connectEndStreamError('unavailable', message));
      } else {
        res.destroy();
      }
      this.upstream?.destroy();
    },
  };
}
