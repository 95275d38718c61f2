"""`manage.py crontab`: dramatiq-crontab's scheduler with Packdesk's schedule (config/schedule.py).

The library only schedules actors decorated with @cron in `<app>.tasks` modules; our jobs are
listed in one place instead, so this command registers them first and then runs the library's
command unchanged (its Redis lock, signals and heartbeat included).
"""
from dramatiq_crontab.management.commands.crontab import Command as LibraryCommand

from config import schedule


class Command(LibraryCommand):
    help = LibraryCommand.help + " Registers config/schedule.py first."

    def handle(self, *args, **options):
        for actor_path in schedule.register():
            self.stdout.write(f"Scheduled {actor_path}.")
        return super().handle(*args, **options)
