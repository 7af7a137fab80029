// The page's CSP admits <style> elements only with this response's nonce. xterm.js makes its own
// at run time, so every <style> this document creates gets the nonce the page carries.
const nonce = document.querySelector<HTMLMetaElement>('meta[name="cubebox-style-nonce"]')?.content ?? '';
const create = document.createElement.bind(document) as (tag: string, opts?: ElementCreationOptions) => HTMLElement;
document.createElement = ((tag: string, opts?: ElementCreationOptions) => {
  const el = create(tag, opts);
  if (nonce && tag.toLowerCase() === 'style') el.setAttribute('nonce', nonce);
  return el;
}) as typeof document.createElement;
