#!/usr/bin/env python3
"""End-to-end check of the widget demos (nbs/21_demo.ipynb) in a real browser.

    python tools/demo_e2e.py [--out demo_e2e.png] [--timeout 600] [--notebook nbs/21_demo.ipynb]

Starts JupyterLab on a free localhost port with a random token and a temporary root folder holding a copy of
the demo notebook, drives headless Chromium with Selenium: opens the notebook, runs all cells (any error
output fails the check), clicks the first Generate button and waits until the result image changes and the
settings table appears. Saves a screenshot of that app to --out. Exits 0 only if a new image appeared.

Needs (besides the dev requirements jupyterlab + jupyterlab_widgets): Debian's `chromium` and
`chromium-driver` (`apt-get install -y chromium chromium-driver`) and `pip install selenium`. Nothing is
fetched from the network: Chromium starts with background networking, component updates and sync off, and
Selenium is given the driver's path (no Selenium Manager download).
"""
import argparse, json, os, secrets, shutil, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def log(msg: str): print(f"[demo_e2e {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def first_existing(paths, what: str) -> str:
    for p in paths:
        if Path(p).exists(): return p
    sys.exit(f"{what} not found (looked for {', '.join(paths)}); apt-get install -y chromium chromium-driver")


def prepare_root(root: Path, notebook: Path):
    "Copy the notebook (with a Python 3 kernelspec, so Lab does not ask) and its images; quiet Lab's news."
    nb = json.loads(notebook.read_text())
    nb.setdefault("metadata", {})["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                                   "language": "python"}
    (root / notebook.name).write_text(json.dumps(nb))
    if (notebook.parent / "images").is_dir(): shutil.copytree(notebook.parent / "images", root / "images")
    settings = root / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))


def start_lab(root: Path, port: int, token: str, logfile) -> subprocess.Popen:
    "JupyterLab serving `root` on 127.0.0.1:`port`, its user config and runtime files kept under `root`."
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".jupyter"), "JUPYTER_RUNTIME_DIR": str(root / ".rt"),
           "IPYTHONDIR": str(root / ".ipython"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0: cmd.append("--allow-root")     # containers, CI runners
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=logfile, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    for _ in range(120):
        if proc.poll() is not None: sys.exit(f"JupyterLab exited with code {proc.returncode}; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2): return proc
        except OSError: time.sleep(0.5)
    proc.terminate(); sys.exit("JupyterLab did not answer within 60 s")


def start_chromium(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = first_existing(CHROMIUM, "chromium")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
              f"--user-data-dir={profile_dir}", "--window-size=1400,1000"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(first_existing(DRIVER, "chromedriver")), options=opts)


# JavaScript run in the page; `window.jupyterapp` exists because of --LabApp.expose_app_in_browser. The notebook
# panel is looked up among the main-area widgets by its path: `shell.currentWidget` stays null in a headless
# window that never had focus.
JS_PANEL = """const name = arguments[0];
const ws = window.jupyterapp ? Array.from(window.jupyterapp.shell.widgets('main')) : [];
const panel = ws.find(w => w.context && w.context.path.endsWith(name));
"""
JS_KERNEL = JS_PANEL + """const k = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
return k ? k.status : null;"""
JS_RUN_ALL = JS_PANEL + """window.jupyterapp.shell.activateById(panel.id);
if (!window.jupyterapp.commands.isEnabled('notebook:run-all-cells')) return false;
window.jupyterapp.commands.execute('notebook:run-all-cells'); return true;"""
JS_CELLS = JS_PANEL + """const code = panel.content.widgets.filter(c => c.model.type === 'code');
const errors = [];
for (const c of code) for (const o of c.model.outputs.toJSON())
  if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
return {n: code.length, done: code.filter(c => c.model.executionCount !== null).length, errors: errors};"""
JS_IMAGE = """const img = document.querySelector('.dnb-result');
const btn = document.querySelector('.dnb-generate');
const app = document.querySelector('.dnb-app');
return img ? {src: img.src, w: img.naturalWidth, busy: btn ? btn.disabled : null,
              table: app ? app.querySelectorAll('.dnb-settings').length : 0,
              error: app && app.querySelector('.dnb-error') ? app.querySelector('.dnb-error').innerText : null}
           : null;"""


def wait_for(fn, timeout: float, what: str, every: float = 1.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v: return v
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


PROMPT, SEED = "a blue square on a yellow background", "4242"


def drive(driver, url: str, name: str, out: Path, timeout: float) -> bool:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    driver.get(url)
    kernel = lambda: driver.execute_script(JS_KERNEL, name)
    wait_for(lambda: kernel() == "idle", 300, "the notebook's kernel to be idle")
    log("notebook open, kernel idle: running all cells")
    driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook")[0].click()          # focus, as a user would
    wait_for(lambda: driver.execute_script(JS_RUN_ALL, name), 60, "'Run All Cells' to be enabled")
    def finished():
        s = driver.execute_script(JS_CELLS, name)
        if s["errors"]: raise RuntimeError(f"a cell failed: {s['errors'][0]}")
        return s["done"] == s["n"] and kernel() == "idle" and s
    s = wait_for(finished, timeout, "all cells to run", every=2)
    log(f"{s['done']} code cells ran without errors")
    app = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".dnb-app"), 60, "the first app")[0]
    button = app.find_element(By.CSS_SELECTOR, ".dnb-generate")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    before = wait_for(lambda: driver.execute_script(JS_IMAGE), 60, "the result image widget")
    for css, value in ((".dnb-prompt input", PROMPT), (".dnb-seed input", SEED)):    # type as a user would
        box = app.find_element(By.CSS_SELECTOR, css)
        box.send_keys(Keys.CONTROL, "a"); box.send_keys(value, Keys.TAB)
    time.sleep(1)                                            # the values reach the kernel
    log(f"typed prompt {PROMPT!r} and seed {SEED}; clicking Generate (image before: {before['w']} px wide)")
    button.click()
    def new_image():          # an error the notebook showed on purpose before the click is not this click's
        now = driver.execute_script(JS_IMAGE)
        if now and now["error"] and now["error"] != before["error"]:
            raise RuntimeError(f"the app reported: {now['error']}")
        return now and now["src"] != before["src"] and now["w"] > 0 and now["busy"] is False \
            and now["table"] > 0 and now
    after = wait_for(new_image, timeout, "a new image after Generate")
    shown = app.find_element(By.CSS_SELECTOR, ".dnb-settings").text
    if PROMPT not in shown or SEED not in shown:
        raise RuntimeError(f"the settings shown are not the ones typed: {shown!r}")
    log(f"new image: {after['w']} px wide, settings shown with the typed prompt and seed")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", app)
    time.sleep(0.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    app.screenshot(str(out))
    log(f"screenshot of the app: {out}")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notebook", type=Path, default=ROOT / "nbs" / "21_demo.ipynb")
    ap.add_argument("--out", type=Path, default=Path("demo_e2e.png"), help="screenshot (PNG) to write")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for running the cells, and for Generate")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) afterwards")
    args = ap.parse_args(argv)
    if not args.notebook.is_file(): sys.exit(f"--notebook {args.notebook} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix="demo_e2e_"))
    root = tmp / "root"; root.mkdir()
    prepare_root(root, args.notebook)
    port, token = free_port(), secrets.token_hex(16)
    lab = driver = None
    ok = False
    with open(tmp / "jupyterlab.log", "w") as lab_log:
        try:
            lab = start_lab(root, port, token, lab_log)
            log(f"JupyterLab on 127.0.0.1:{port} (root {root})")
            driver = start_chromium(tmp / "chromium")
            ok = drive(driver, f"http://127.0.0.1:{port}/lab/tree/{args.notebook.name}?token={token}",
                       args.notebook.name, args.out.resolve(), args.timeout)
        except (TimeoutError, RuntimeError) as e:
            log(f"FAILED: {e}")
            if driver is not None:
                driver.save_screenshot(str(tmp / "failure.png")); log(f"page at failure: {tmp / 'failure.png'}")
        finally:
            if driver is not None: driver.quit()
            if lab is not None:
                lab.terminate()
                try: lab.wait(15)
                except subprocess.TimeoutExpired: lab.kill()
    if not ok or args.keep: log(f"logs kept in {tmp}")
    else: shutil.rmtree(tmp, ignore_errors=True)
    log("PASS: Generate made a new image" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__": sys.exit(main())
