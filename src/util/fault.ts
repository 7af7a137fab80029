/**
 * Fault injection for crash tests: when CUBEBOX_FAULT names this point, the process
 * kills itself with SIGKILL right here, as a crash at this step would.
 */
export function faultPoint(name: string): void {
  if (process.env.CUBEBOX_FAULT === name) process.kill(process.pid, 'SIGKILL');
}
