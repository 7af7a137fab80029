# Jupyter Server settings for the code-interpreter server (loaded with --config): kernel
# channel WebSockets send each message at once. Without TCP_NODELAY, the several small
# frames of one execution (busy, input, result, idle, reply) wait on delayed ACKs, tens of
# milliseconds each, on the loopback connection to the server.
from jupyter_server.services.kernels import handlers as _handlers

_open = _handlers.ZMQChannelsHandler.open


def _open_nodelay(self, *args, **kwargs):
    self.set_nodelay(True)
    return _open(self, *args, **kwargs)


_handlers.ZMQChannelsHandler.open = _open_nodelay
