// A file browser through the data plane with the sandbox's own token: list, download, upload.
// File names come from the sandbox: they are only ever text (and a download's suggested name).
import { useEffect, useMemo, useState } from 'preact/hooks';
import { message, type SandboxDetail } from './api.js';
import { sdkSandbox } from './sdk.js';
import { bytes, ErrorLine } from './ui.js';

interface Entry {
  name: string;
  path: string;
  type?: string;
  size?: number;
}

const join = (dir: string, name: string) => (dir.endsWith('/') ? dir + name : `${dir}/${name}`);
const parent = (dir: string) => dir.replace(/\/[^/]*\/?$/, '') || '/';

export function FilesPane({ detail }: { detail: SandboxDetail }) {
  const sbx = useMemo(() => sdkSandbox(detail), [detail.sandboxID, detail.envdAccessToken]);
  const [dir, setDir] = useState('/home/user');
  const [typed, setTyped] = useState('/home/user');
  const [entries, setEntries] = useState<Entry[]>();
  const [error, setError] = useState<string>();
  const [note, setNote] = useState('');
  const [tick, setTick] = useState(0);
  useEffect(() => {
    let stale = false;
    setError(undefined);
    sbx.files
      .list(dir)
      .then((l) => !stale && setEntries([...l].sort((a, b) => (a.type === b.type ? (a.name < b.name ? -1 : 1) : a.type === 'dir' ? -1 : 1))))
      .catch((e: unknown) => !stale && (setEntries([]), setError(message(e))));
    return () => {
      stale = true;
    };
  }, [sbx, dir, tick]);
  const go = (d: string) => {
    setDir(d);
    setTyped(d);
  };
  const download = async (e: Entry) => {
    try {
      const blob = await sbx.files.read(e.path, { format: 'blob' });
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = e.name;
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      setError(message(err));
    }
  };
  const upload = async (input: HTMLInputElement) => {
    const files = [...(input.files ?? [])];
    try {
      for (const f of files) {
        setNote(`uploading ${f.name}…`);
        await sbx.files.write(join(dir, f.name), f);
      }
      setNote(files.length ? `uploaded ${files.map((f) => f.name).join(', ')}` : '');
      input.value = '';
      setTick((t) => t + 1);
    } catch (err) {
      setNote('');
      setError(message(err));
    }
  };
  return (
    <div>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          go(typed.trim() || '/');
        }}
      >
        <label>
          Directory <input name="dir" value={typed} onInput={(e) => setTyped((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit">Open</button>
        <button type="button" onClick={() => go(parent(dir))} disabled={dir === '/'}>
          Up
        </button>
        <label class="upload">
          Upload file <input name="upload" type="file" multiple onChange={(e) => void upload(e.target as HTMLInputElement)} />
        </label>
      </form>
      <p class="muted" aria-live="polite">
        {note}
      </p>
      <ErrorLine error={error} />
      <table class="files">
        <thead>
          <tr>
            <th scope="col">Name</th>
            <th scope="col">Type</th>
            <th scope="col">Size</th>
            <th scope="col">Action</th>
          </tr>
        </thead>
        <tbody>
          {(entries ?? []).map((e) => (
            <tr key={e.path}>
              <td class="mono">
                {e.type === 'dir' ? (
                  <button type="button" class="link" onClick={() => go(e.path)}>
                    {e.name}/
                  </button>
                ) : (
                  e.name
                )}
              </td>
              <td>{e.type ?? ''}</td>
              <td>{e.type === 'dir' ? '' : bytes(e.size)}</td>
              <td>
                {e.type === 'dir' ? null : (
                  <button type="button" onClick={() => void download(e)} aria-label={`Download ${e.name}`}>
                    Download
                  </button>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      {entries && !entries.length && !error ? <p>Empty directory.</p> : null}
    </div>
  );
}
