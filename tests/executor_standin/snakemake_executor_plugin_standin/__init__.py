"""A stand-in cluster executor: non-local like SLURM's (so Snakemake runs without --cores), and it submits
nothing: every job is reported failed at once. Enough to run the workflow's onstart as a cluster run does."""
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.settings import CommonSettings

common_settings = CommonSettings(non_local_exec=True, implies_no_shared_fs=False, job_deploy_sources=False)


class Executor(RemoteExecutor):
    def run_job(self, job):
        self.report_job_error(SubmittedJobInfo(job), msg="the stand-in executor runs nothing")

    async def check_active_jobs(self, active_jobs):
        for job in active_jobs:
            yield job

    def cancel_jobs(self, active_jobs):
        pass
