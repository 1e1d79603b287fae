"""Storage cost per trial with 1, 2 and 4 concurrent workers: the journal file (the
embedded default), PostgreSQL, MySQL/MariaDB and Optuna's journal on Redis.

    pip install -e ".[postgres,mysql,redis]"   # and the servers (default: loopback)
    python benchmarks/storage_scaling.py [--trials-per-worker 40] [--postgres URL]
        [--mysql URL] [--redis URL]
    python benchmarks/storage_scaling.py --postgres '' --mysql '' --redis ''  # the file alone

Each worker runs Optuna trials whose objective does no training but records what a real
trial records (5 sampled parameters, ~45 user attributes, 2 objective values), so the
figures are the storage round-trips alone. A real trial takes seconds to hours, so
divide its length by these figures to see how many workers a storage sustains.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
import uuid

import optuna

from harness.sweep.storage import open_storage

from requirements import need_package, need_postgres


def objective(trial: optuna.Trial) -> tuple[float, float]:
    trial.set_user_attr("worker", {"host": "bench", "pid": 0})
    params = [trial.suggest_float("T", 1, 10, log=True), trial.suggest_float("T_s", 1, 10, log=True),
              trial.suggest_float("alpha", 0, 1), trial.suggest_int("num_layers", 1, 3),
              trial.suggest_categorical("hidden_size", [64, 128, 192, 384])]
    for i in range(44):
        trial.set_user_attr(f"field_{i}", float(i) * params[0])
    return params[2], params[3] * params[4]


def worker(url: str, name: str, trials: int, ready) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=open_storage(url),
                              sampler=optuna.samplers.RandomSampler())
    ready.wait()  # process start-up and imports stay out of the measurement
    study.optimize(objective, n_trials=trials)


def measure(url: str, workers: int, trials_per_worker: int) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=open_storage(url),
                        directions=["maximize", "minimize"])
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(workers + 1)
    processes = [context.Process(target=worker, args=(url, name, trials_per_worker, ready))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    ready.wait()
    started = time.perf_counter()
    for process in processes:
        process.join()
    return (time.perf_counter() - started) / (workers * trials_per_worker)


def create_mysql_database(url: str) -> None:
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    engine = sqlalchemy.create_engine(parsed.set(database=""))
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE IF NOT EXISTS `{parsed.database}`"))
    engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials-per-worker", type=int, default=40)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="the PostgreSQL database to measure; '' skips it")
    parser.add_argument("--mysql", default="mysql+pymysql://root@127.0.0.1:3306/kd_bench",
                        help="a MySQL/MariaDB database (created if missing); '' skips it")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14",
                        help="a Redis database for Optuna's journal (emptied first); '' skips it")
    args = parser.parse_args()
    # Found out now, not after the journal file's measurements.
    if args.postgres:
        need_postgres(args.postgres, "start one, name another with --postgres URL, or "
                                     "skip it with --postgres ''")
    for url, package in ((args.mysql, "pymysql"), (args.redis, "redis")):
        if url:
            need_package(package, f'pip install -e ".[{package.removeprefix("py")}]"')
    if args.mysql:
        create_mysql_database(args.mysql)
    if args.redis:
        import redis

        redis.Redis.from_url(args.redis).flushdb()
    with tempfile.TemporaryDirectory() as folder:
        storages = {"journal file": f"journal:{folder}/bench.journal"}
        for label, url in (("postgresql", args.postgres), ("mariadb", args.mysql),
                           ("redis", args.redis)):
            if url:
                storages[label] = url
        for label, url in storages.items():
            for workers in (1, 2, 4):
                seconds = measure(url, workers, args.trials_per_worker)
                print(f"{label:12s} {workers} worker(s): {1000 * seconds:7.1f} ms of wall time "
                      f"per trial ({1 / seconds:6.1f} trials/s in all)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
