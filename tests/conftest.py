import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# A tuned configuration on this machine (porevox bench --tune) would change chunk
# sizes and layouts under the tests: point porevox (and the processes the tests
# start) at one that does not exist. The tuning's own tests set their own.
os.environ["POREVOX_CONFIG"] = str(Path(tempfile.gettempdir()) / f"porevox-tests-{os.getpid()}-none.yaml")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def local_cluster():
    """A real LocalCluster (2 worker processes, 1 thread each) for the session."""
    from distributed import LocalCluster

    environ = dict(os.environ)
    with LocalCluster(host="127.0.0.1", n_workers=2, threads_per_worker=1,
                      memory_limit="2GB", dashboard_address="127.0.0.1:0") as lc:
        # The nannies write the workers' variables (OMP_NUM_THREADS=1, glibc's
        # MALLOC_TRIM_THRESHOLD_, ...) into this process's environment, which every
        # `porevox` process a test starts would inherit: torch trained 2.5x slower there.
        os.environ.clear()
        os.environ.update(environ)
        yield lc


@pytest.fixture(scope="session")
def demo_twin(tmp_path_factory):
    """The demo twin study (preset demo, seed 0, with its contact sheet), synthesized
    once for the session: test_synth checks it, test_demo starts from a copy of it."""
    from porevox.pipelines import synthesize_study

    out = tmp_path_factory.mktemp("twin")
    return out, synthesize_study(out, preset="demo", seed=0, preview=True)


@pytest.fixture
def client(local_cluster):
    """A client attached (porevox's attach path) to the session's cluster; Dask
    computations in the test run there, and only in that test."""
    from porevox.engine import cluster

    with cluster(local_cluster.scheduler_address) as c:
        yield c


def stop_processes(procs) -> None:
    """Terminate processes started by a fixture, newest first, killing any that linger."""
    import subprocess

    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def porous(shape, rng, porosity=0.4, sigma=2.0):
    """A smooth random solid/pore structure (bool, True = solid)."""
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, porosity)


@pytest.fixture(scope="session")
def external_scheduler(tmp_path_factory):
    """A real external Dask cluster: `dask scheduler` and `dask worker` processes on
    127.0.0.1, as a user would start them (or dask-jobqueue would)."""
    import json
    import subprocess
    import sys
    import time
    from pathlib import Path

    folder = tmp_path_factory.mktemp("external")
    sched_file = folder / "scheduler.json"
    dask_cli = str(Path(sys.executable).parent / "dask")
    common = ["--no-dashboard"]
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--scheduler-file", str(sched_file), *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(subprocess.Popen(
            [dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "1",
             "--memory-limit", "2GB", "--host", "127.0.0.1", "--name", "external-0", *common],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(1, timeout=60)
        yield address
    finally:
        stop_processes(procs)


@pytest.fixture(scope="session")
def twin_arrays():
    """A small digital-twin sample (HPA 250 °C, demo voxel size): image, truth and
    truth annotation as NumPy arrays, shape (16, 64, 80)."""
    from porevox.pipelines.synth import SampleSpec, prepare
    from porevox.synthetic.fibsem import FibSemModel, render_box

    spec = SampleSpec("HPA", 250, 0, "demo", 0)
    model = FibSemModel()
    ms, threshold = prepare(spec, model, shape=(16, 64, 80))
    box = tuple(slice(0, n) for n in ms.shape)
    truth, annotation, image = render_box(ms, model, 0, box, threshold, "uint8")
    return {"image": image, "truth": truth, "annotation": annotation, "voxel_size": ms.voxel_size}


def twin_volume(path, arrays, chunks):
    """A porevox volume at `path` holding `arrays` (see `twin_arrays`) in `chunks`."""
    from porevox.engine import create_volume
    from porevox.engine.storage import AXES, LABELS

    vol = create_volume(path, arrays["image"].shape, "uint8", arrays["voxel_size"], chunks=chunks)
    vol.image[:] = arrays["image"]
    for name in ("truth", "truth_annotation"):
        arr = vol.group.create_array(f"{LABELS}/{name}", shape=arrays["image"].shape, dtype="uint8",
                                     chunks=chunks, fill_value=0, dimension_names=AXES)
        arr[:] = arrays["truth" if name == "truth" else "annotation"]
    return vol


def real_data(name: str) -> Path:
    """A folder of ``shared/real-data``: under ``$POREVOX_SHARED``, else beside the
    repository or inside it; the test is skipped where there is none. The data is
    read there, never copied."""
    root = Path(__file__).resolve().parents[1]
    bases = [Path(os.environ["POREVOX_SHARED"])] if os.environ.get("POREVOX_SHARED") else []
    for base in (*bases, root.parent / "shared", root / "shared"):
        folder = base / "real-data" / name
        if folder.is_dir():
            return folder
    pytest.skip(f"needs shared/real-data/{name} beside the repository (or under $POREVOX_SHARED)")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The S3-compatible server the object-storage tests start (s3_server) listens here.
# Its variables are set before any cluster starts, so every Dask worker (and any a
# nanny restarts) and every process a test starts reaches it as a user's would.
S3_ENV = {"AWS_ACCESS_KEY_ID": "porevox-test", "AWS_SECRET_ACCESS_KEY": "porevox-test",
          "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}", "AWS_DEFAULT_REGION": "us-east-1"}
os.environ.update(S3_ENV)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 for the session,
    reached through the usual AWS_* variables (:data:`S3_ENV`)."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    port = int(S3_ENV["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail(f"moto's S3 server did not start on port {port}")
                time.sleep(0.1)
        yield S3_ENV
    finally:
        stop_processes([proc])


@pytest.fixture
def bucket(s3_server):
    """A new, empty bucket on the session's S3 server: its URL (``s3://name``)."""
    import uuid

    import s3fs

    name = f"porevox-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


@pytest.fixture
def s3_client(s3_server, client):
    """`client` on workers that reach the session's S3 server."""
    return client
