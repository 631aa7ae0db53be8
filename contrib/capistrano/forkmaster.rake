# forkmaster tasks for Capistrano 3: the deploy's restart is a zero-downtime
# `forkmaster upgrade --wait`, one host at a time (a master that is not
# running yet is started instead), and the deploy fails at the first host
# where that fails, with `current` pointed back at the previous release on
# that host and on every host not reached yet, so that those really run the
# previous release, now and at their next worker respawn.
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

require "shellwords"

namespace :forkmaster do
  # forkmaster's client exit codes: 0 done, 1 failed (the old master keeps
  # serving) or refused (run as the master's user or root), 2 usage, 3 no
  # master running, 4 timed out.
  def forkmaster_command(*args)
    [fetch(:forkmaster_bin), *args.map(&:to_s), "-c", fetch(:forkmaster_config)]
  end

  # Points `current` on this host at `target`, atomically (a rename).
  def point_current_at(target)
    tmp = "#{current_path}.forkmaster-tmp"
    execute :ln, "-sfn", target, tmp
    execute :mv, "-T", tmp, current_path
  end

  desc "Remember where `current` points on each host (before deploy:publishing switches it)"
  task :remember_current do
    previous = {}
    lock = Mutex.new
    on roles(fetch(:forkmaster_roles)) do |host|
      if test("[ -L #{current_path.to_s.shellescape} ]")
        target = capture(:readlink, current_path)
        lock.synchronize { previous[host.to_s] = target }
      end
    end
    set :forkmaster_previous, previous
  end

  desc "Zero-downtime upgrade (USR2), one host at a time, or a start where no master runs; " \
       "at the first failure, points `current` back on that host and the ones not reached"
  task :upgrade do
    hosts = roles(fetch(:forkmaster_roles)).to_a
    hosts.each_with_index do |target_host, index|
      begin
        on target_host do |host|
          status = forkmaster_command(:status).shelljoin
          if test("#{status} >/dev/null 2>&1; [ $? -eq 3 ]")
            # Exit 3: no master running (a first deploy, or a stopped app).
            info "no forkmaster master running on #{host}: starting one"
            # Returns once every worker is ready, or exits 1 with the reason.
            execute fetch(:forkmaster_bin), "-D", "-c", fetch(:forkmaster_config)
          else
            # Exits 0 once the new master serves with every worker ready and
            # the old master is gone; prints e.g.
            # "upgraded: pid 4242 -> 4311, 4 workers ready in 1.23s".
            execute(*forkmaster_command(:upgrade, "--wait", "--timeout", fetch(:forkmaster_timeout)))
          end
        end
      rescue StandardError => e
        # Non-zero exit; forkmaster's reason is the stderr line in the
        # message, e.g. "upgrade failed: worker=0 exec ./bin/server: No such
        # file or directory; pid 4242 keeps serving" (exit 1): the old master
        # still serves the previous release, but `current` points to the new
        # one, and any worker it starts from now on (a crash respawn, a HUP)
        # would run from there; the hosts not reached yet are the same.
        # (Logging outside `on` goes through run_locally's backend.)
        # SSHKit wraps the failed command (whose message holds forkmaster's
        # stderr) in an ExecuteError.
        reason = (e.cause || e).message
        run_locally { error "forkmaster failed on #{target_host}: #{reason}" }
        roll_back_current(hosts[index..], fetch(:forkmaster_previous, {}))
        done = hosts[0...index].map(&:to_s).join(", ")
        run_locally do
          error "hosts that run the new release: #{done.empty? ? 'none' : done}; fix and deploy " \
                "again, or run `cap #{fetch(:stage)} deploy:rollback` to put them back too"
        end
        raise
      end
    end
  end

  # Points `current` back at what it was before this deploy on `hosts`.
  def roll_back_current(hosts, previous)
    on hosts do |host|
      target = previous[host.to_s]
      if target
        point_current_at(target)
        warn "#{host}: `current` points back at #{target}"
      else
        warn "#{host}: no previous `current` recorded (a first deploy, or run outside `deploy`): left as it is"
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

before "deploy:publishing", "forkmaster:remember_current"
after "deploy:publishing", "forkmaster:restart"
