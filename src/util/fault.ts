/**
 * Fault injection for crash tests: when the armed fault (configuration's CUBEBOX_FAULT) names
 * this point, the process kills itself with SIGKILL right here, as a crash at this step would.
 */
let armed: string | undefined;

/** Arms the fault point the configuration names (undefined: none). */
export function armFault(name: string | undefined): void {
  armed = name;
}

let observer: ((name: string) => void) | undefined;

/** Sees every fault point passed (measurements: the bench's CPU profile splits a create by them); undefined: none. */
export function observeFaultPoints(fn: ((name: string) => void) | undefined): void {
  observer = fn;
}

export function faultPoint(name: string): void {
  observer?.(name);
  if (armed === name) process.kill(process.pid, 'SIGKILL');
}
