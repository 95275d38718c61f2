import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# The demo has no separate worker process: jobs run in threads of this one (runserver loads
# this module too), and the periodic jobs are sent by the scheduler in a thread of it. In
# production both are off: `manage.py rundramatiq` and `manage.py crontab` run as processes.
from config.dramatiq import start_inprocess_worker  # noqa: E402
from config.schedule import start_inprocess_scheduler  # noqa: E402

start_inprocess_worker()
start_inprocess_scheduler()
