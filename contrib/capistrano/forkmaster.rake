# forkmaster tasks for Capistrano 3: the deploy's restart is a zero-downtime
# `forkmaster upgrade --wait`, one host at a time, and the deploy fails (and
# stops at that host) if the upgrade fails.
#
# Install: copy to lib/capistrano/tasks/forkmaster.rake (the default Capfile
# imports lib/capistrano/tasks/*.rake). Settings, in config/deploy.rb:
#
#   set :forkmaster_bin,     "/usr/local/bin/forkmaster"
#   set :forkmaster_config,  -> { "/etc/forkmaster/#{fetch(:application)}.yml" }
#   set :forkmaster_roles,   :app
#   set :forkmaster_timeout, "120s"   # forkmaster's --timeout for --wait
#
# The app's forkmaster config should run the workers from the release that
# `current` points to, e.g.
#
#   working_directory: /srv/app/current
#   command: [bundle, exec, ./bin/server]
#
# Each worker changes into working_directory at every spawn, so after
# Capistrano switches `current`, the new master started by the upgrade (and
# any worker started later) runs the new release. See docs/DEPLOYING.md.
#
# The command runs over SSH as the deploy user: it must be the user the
# master runs as, or root (a master answers status requests only from its
# own user or root; anyone else is told to run as that user, exit 1).

namespace :load do
  task :defaults do
    set_if_empty :forkmaster_bin, "/usr/local/bin/forkmaster"
    set_if_empty :forkmaster_config, -> { "/etc/forkmaster/#{fetch(:application)}.yml" }
    set_if_empty :forkmaster_roles, :app
    set_if_empty :forkmaster_timeout, "120s"
  end
end

namespace :forkmaster do
  # forkmaster's client exit codes: 0 done, 1 failed (the old master keeps
  # serving), 2 usage, 3 no master running, 4 timed out.
  def forkmaster_command(*args)
    [fetch(:forkmaster_bin), *args.map(&:to_s), "-c", fetch(:forkmaster_config)]
  end

  desc "Zero-downtime upgrade (USR2), one host at a time; fails the deploy if it fails"
  task :upgrade do
    # in: :sequence: the next host is only touched once this one succeeded.
    on roles(fetch(:forkmaster_roles)), in: :sequence do |host|
      begin
        # Exits 0 once the new master serves with every worker ready and the
        # old master is gone; prints e.g.
        # "upgraded: pid 4242 -> 4311, 4 workers ready in 1.23s".
        execute(*forkmaster_command(:upgrade, "--wait", "--timeout", fetch(:forkmaster_timeout)))
      rescue SSHKit::Command::Failed => e
        # Non-zero exit; forkmaster's reason is the stderr line in e.message:
        # - "upgrade failed: worker=0 exec ./bin/server: No such file or
        #   directory; pid 4242 keeps serving" (exit 1): the old master still
        #   serves the previous release, but `current` already points to the
        #   new one, and any worker the old master starts from now on (a
        #   crash respawn, a HUP) runs from there: roll back promptly;
        # - "not running: ..." (exit 3): no master to upgrade; start one with
        #   `cap STAGE forkmaster:start`;
        # - "timed out after 120s: ..." (exit 4): the message says where it was.
        error "forkmaster upgrade failed on #{host}: #{e.message}"
        error "if a master was serving on #{host}, it keeps serving the previous release; " \
              "run `cap #{fetch(:stage)} deploy:rollback` to point `current` back " \
              "(hosts upgraded before #{host} run the new release)"
        raise
      end
    end
  end

  desc "Rolling restart of the workers with the config re-read (HUP), one host at a time"
  task :reload do
    on roles(fetch(:forkmaster_roles)), in: :sequence do
      execute(*forkmaster_command(:reload, "--wait", "--timeout", fetch(:forkmaster_timeout)))
    end
  end

  desc "Start forkmaster daemonized; returns once every worker is ready"
  task :start do
    on roles(fetch(:forkmaster_roles)) do
      execute fetch(:forkmaster_bin), "-D", "-c", fetch(:forkmaster_config)
    end
  end

  desc "Graceful stop (QUIT); returns once the master is gone"
  task :stop do
    on roles(fetch(:forkmaster_roles)) do
      execute(*forkmaster_command(:stop, "--wait", "--timeout", fetch(:forkmaster_timeout)))
    end
  end

  desc "Show the master, its workers and the last upgrade and reload"
  task :status do
    on roles(fetch(:forkmaster_roles)) do |host|
      info "#{host}:\n" + capture(*forkmaster_command(:status))
    end
  end

  # What `deploy` runs once the new release is published.
  task :restart do
    invoke "forkmaster:upgrade"
  end
end

after "deploy:publishing", "forkmaster:restart"
