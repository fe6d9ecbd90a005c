"""Optuna sweeper whose study continues where it stopped (conf/hparams_search/optuna.yaml).

hydra-optuna-sweeper loads a study that already exists in `hydra.sweeper.storage`, but then runs `n_trials` more
trials, numbers the jobs from 0 again, and draws from a sampler seeded as at the first start, so the new trials
repeat the first ones' parameters (hydra issue #2647). Here `n_trials` is the study's total: a study started again
after a crash runs only the trials it still lacks. Hydra loads sweepers only from the `hydra_plugins` package.
"""

from __future__ import annotations

import logging

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger("covlight")


class ContinuingOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> None:
        import optuna

        impl = self.sweeper
        names = {summary.study_name for summary in optuna.get_all_study_summaries(impl.storage)} if impl.storage \
            else set()
        if impl.study_name in names:
            trials = optuna.load_study(study_name=impl.study_name, storage=impl.storage).trials
            finished = sum(trial.state.is_finished() for trial in trials)
            log.info("continuing study %s in %s: %d of %d trials finished, %d to run", impl.study_name,
                     impl.storage, finished, impl.n_trials, max(impl.n_trials - finished, 0))
            impl.n_trials = max(impl.n_trials - finished, 0)
            impl.job_idx = len(trials)
            impl.sampler.reseed_rng()
        return impl.sweep(arguments)
