# Run silently in every Python context when its kernel starts (see contexts.ts): plain
# tracebacks, full reprs, and the result formats @e2b/code-interpreter reads besides
# IPython's own: e2b/data (a DataFrame as column -> values), e2b/chart (a matplotlib
# figure's structured data, charts.py) and application/json for dicts and lists. PIL
# images that are shown or saved to a file are displayed (a png result), as upstream's
# startup hooks do.
def _cubebox_setup():
    import json
    import sys
    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    ip = get_ipython()
    ip.run_line_magic('colors', 'NoColor')
    ip.display_formatter.formatters['text/plain'].max_seq_length = 0

    class DataFormatter(BaseFormatter):
        format_type = Unicode('e2b/data')
        print_method = ObjectName('_repr_e2b_data_')
        _return_type = (dict,)

    class ChartFormatter(BaseFormatter):
        # Not a type printer: matplotlib's inline backend pops Figure from every formatter.
        format_type = Unicode('e2b/chart')
        print_method = ObjectName('_repr_e2b_chart_')
        _return_type = (dict,)

        def __call__(self, obj):
            cls = type(obj)
            if self.enabled and any(c.__name__ == 'Figure' and c.__module__ == 'matplotlib.figure' for c in cls.__mro__):
                return chart(obj)
            return None

    def dataframe(df):
        try:
            split = json.loads(df.to_json(orient='split', date_format='iso'))
            cols = [str(c) for c in split['columns']]
            return {c: [row[i] for row in split['data']] for i, c in enumerate(cols)}
        except Exception:
            return None

    def chart(fig):
        try:
            sys.path.insert(0, '/.cubebox/interpreter')
            try:
                import _cubebox_charts as _charts
            finally:
                sys.path.remove('/.cubebox/interpreter')
            return _charts.chart_of_figure(fig)
        except Exception:
            return None

    def plain_json(obj):
        try:
            return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)))
        except Exception:
            return None

    formatters = ip.display_formatter.formatters
    data = DataFormatter(parent=ip.display_formatter)
    data.for_type_by_name('pandas.core.frame', 'DataFrame', dataframe)
    formatters['e2b/data'] = data
    formatters['e2b/chart'] = ChartFormatter(parent=ip.display_formatter)
    js = formatters['application/json']
    js.for_type(dict, plain_json)
    js.for_type(list, plain_json)
    ip.display_formatter.format(0)  # the first run's result does not pay for warming the formatters


def _cubebox_pil_hook():
    # Patches PIL.Image when a cell first imports it (importing it here would slow every start).
    import importlib.abc
    import importlib.util
    import os
    import sys

    def patch(image_module):
        from IPython.display import display
        from PIL import ImageShow

        save = image_module.Image.save

        def save_and_display(self, fp, format=None, **params):
            save(self, fp, format, **params)
            # image.show() saves to a temporary file too: one png result either way
            if isinstance(fp, (str, bytes, os.PathLike)):
                display(self)

        image_module.Image.save = save_and_display

        class Shown(ImageShow.Viewer):
            # no desktop viewer to start: saving the image (as PNG) displayed it
            format = 'PNG'
            options = {'compress_level': 1}

            def show_file(self, path=None, **options):
                if path:
                    os.remove(path)
                return 1

        ImageShow._viewers.clear()
        ImageShow.register(Shown)

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != 'PIL.Image':
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                try:
                    patch(module)
                except Exception as err:  # the image still works, without the display
                    print(f'cubebox: PIL display hook failed: {err}', file=sys.stderr)

            spec.loader.exec_module = exec_and_patch
            return spec

    if 'PIL.Image' in sys.modules:
        patch(sys.modules['PIL.Image'])
    else:
        sys.meta_path.insert(0, Finder())


_cubebox_setup()
_cubebox_pil_hook()
del _cubebox_setup, _cubebox_pil_hook
