// Bounds on the TCP connections of one API listener, so that a flood of idle connections costs
// the flooder and not the other users (nor the service's file descriptors): a cap per listener,
// a cap per client address, and a deadline for a connection's first request headers.
import type http from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';

export interface ConnectionLimits {
  /** Open connections on the listener. */
  maxConnections: number;
  /** Open connections from one client address. */
  maxPerAddress: number;
  /** How long a connection may take to send complete request headers. */
  headerTimeoutMs: number;
}

interface Conn {
  key: string;
  socket: Socket;
  address: string;
  /** Requests in flight; an upgraded connection (a tunnel) stays busy until it closes. */
  busy: number;
  upgraded: boolean;
  gone: boolean;
  timer?: NodeJS.Timeout;
}

/**
 * At a cap, the connection that has been idle longest (no request in flight: one still sending
 * its headers, or a keep-alive between requests) gives way to the new one; when every one is
 * busy, the new one is refused. Requests in flight and tunnels are never cut, whatever they last.
 */
export class ConnectionGuard {
  private readonly conns = new Map<string, Conn>();
  /** Idle connections, longest idle first. */
  private readonly idle = new Set<Conn>();
  private readonly byAddress = new Map<string, Set<Conn>>();
  private refused = 0;
  private evicted = 0;
  private lastWarn = 0;

  constructor(
    private readonly limits: ConnectionLimits,
    private readonly log: Logger,
  ) {}

  /** Options for http(s).createServer: no request timeout (streams may last), a header deadline. */
  serverOptions(): http.ServerOptions & { handshakeTimeout: number } {
    const t = this.limits.headerTimeoutMs;
    return { requestTimeout: 0, headersTimeout: t, connectionsCheckingInterval: Math.max(100, Math.min(t / 2, 5000)), handshakeTimeout: t };
  }

  attach(server: http.Server): void {
    server.on('connection', (socket: Socket) => this.admit(socket));
    server.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
      const conn = this.conns.get(keyOf(req.socket));
      if (!conn) return;
      this.setBusy(conn, +1);
      res.once('close', () => this.setBusy(conn, -1));
    });
    server.on('upgrade', (req: http.IncomingMessage) => {
      const conn = this.conns.get(keyOf(req.socket));
      if (!conn) return;
      conn.upgraded = true;
      this.setBusy(conn, +1);
    });
    // accept() failing (EMFILE) is reported here: without a listener it would end the process
    server.on('error', (err: NodeJS.ErrnoException) => {
      if (err.syscall === 'accept') this.warn(`accepting a connection failed: ${err.message}`);
    });
  }

  /** Connections open now (for tests and metrics). */
  get size(): number {
    return this.conns.size;
  }

  /** Cuts every connection (shutdown). */
  destroyAll(): void {
    for (const c of this.conns.values()) c.socket.destroy();
  }

  private admit(socket: Socket): void {
    const address = socket.remoteAddress;
    if (!address) return void socket.destroy();
    const mine = this.byAddress.get(address);
    if (mine && mine.size >= this.limits.maxPerAddress && !this.evict([...mine].find((c) => this.idle.has(c))))
      return this.refuse(socket, `${address} has ${mine.size} connections open`);
    if (this.conns.size >= this.limits.maxConnections && !this.evict(this.idle.values().next().value))
      return this.refuse(socket, `the listener has ${this.conns.size} connections open`);
    const conn: Conn = { key: keyOf(socket), socket, address, busy: 0, upgraded: false, gone: false };
    this.conns.set(conn.key, conn);
    this.idle.add(conn);
    let set = this.byAddress.get(address);
    if (!set) this.byAddress.set(address, (set = new Set()));
    set.add(conn);
    // the first request's headers are due within the deadline (later ones: the server's headersTimeout)
    conn.timer = setTimeout(() => socket.destroy(), this.limits.headerTimeoutMs);
    conn.timer.unref();
    socket.once('close', () => this.forget(conn));
  }

  private forget(conn: Conn): void {
    if (conn.gone) return;
    conn.gone = true;
    clearTimeout(conn.timer);
    if (this.conns.get(conn.key) === conn) this.conns.delete(conn.key);
    this.idle.delete(conn);
    const set = this.byAddress.get(conn.address);
    set?.delete(conn);
    if (set && !set.size) this.byAddress.delete(conn.address);
  }

  private setBusy(conn: Conn, delta: number): void {
    if (conn.gone) return;
    clearTimeout(conn.timer);
    conn.busy += delta;
    if (conn.busy > 0 || conn.upgraded) this.idle.delete(conn);
    else if (!conn.socket.destroyed) {
      this.idle.delete(conn); // re-added last: idle since now
      this.idle.add(conn);
    }
  }

  private evict(conn: Conn | undefined): boolean {
    if (!conn) return false;
    this.evicted++;
    this.warn('connections at a cap: the longest idle ones give way to new ones');
    conn.socket.destroy();
    this.forget(conn); // its 'close' comes later: the new connection must fit now
    return true;
  }

  private refuse(socket: Socket, why: string): void {
    socket.destroy();
    this.refused++;
    this.warn(`refused a connection: ${why}, all busy`);
  }

  /** At most one warning a minute: a flood must not flood the log too. */
  private warn(msg: string): void {
    const now = Date.now();
    if (now - this.lastWarn < 60_000) return;
    this.lastWarn = now;
    this.log.warn({ refused: this.refused, evicted: this.evicted, open: this.conns.size }, msg);
  }
}

function keyOf(socket: Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}`;
}
