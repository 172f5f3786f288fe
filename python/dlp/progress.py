"""Progress of pipeline jobs: one updating line in a terminal, an updating cell output in
Jupyter, plain event lines otherwise (or nothing when switched off)."""
import sys


def _in_jupyter() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        return shell.get_ipython() is not None
    except Exception:  # noqa: BLE001
        return False


class Progress:
    def __init__(self, title: str, enabled=None):
        self.title = title
        self.jupyter = _in_jupyter()
        tty = sys.stderr.isatty()
        self.enabled = (tty or self.jupyter) if enabled is None else enabled
        self.tty = tty and not self.jupyter
        self.shown = 0
        self.handle = None
        self.width = 0

    def _line(self, s) -> str:
        parts = [f"{self.title}: {s.get('phase', '')}"]
        if s.get("fits_total"):
            parts.append(f"fits {s.get('fits_done', 0)}/{s['fits_total']}")
        stages = s.get("running_stages")
        if stages:
            parts.append(f"Ballista job {s.get('ballista_jobs', 0)}: {stages[0]}/{stages[1]} stages")
        return f"[{s.get('elapsed_s', 0.0):6.1f} s] " + " · ".join(parts)

    def update(self, status) -> None:
        if not self.enabled:
            return
        events = status.get("events", [])
        line = self._line(status)
        if self.jupyter:
            from IPython.display import display

            text = "\n".join(f"[{e['at_s']:6.1f} s] {e['message']}" for e in events) + "\n" + line
            if self.handle is None:
                self.handle = display({"text/plain": text}, raw=True, display_id=True)
            else:
                self.handle.update({"text/plain": text}, raw=True)
            return
        if self.tty:
            if len(events) > self.shown:
                sys.stderr.write("\r" + " " * self.width + "\r")
                for e in events[self.shown:]:
                    sys.stderr.write(f"[{e['at_s']:6.1f} s] {self.title}: {e['message']}\n")
                self.shown = len(events)
            sys.stderr.write("\r" + line[:200].ljust(self.width))
            self.width = len(line[:200])
            sys.stderr.flush()
            return
        for e in events[self.shown:]:
            print(f"[{e['at_s']:6.1f} s] {self.title}: {e['message']}", file=sys.stderr)
        self.shown = len(events)

    def close(self) -> None:
        if self.enabled and self.tty and self.width:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.width = 0
