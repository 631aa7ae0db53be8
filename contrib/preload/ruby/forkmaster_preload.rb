# frozen_string_literal: true

# The Ruby side of forkmaster's preload protocol, version 1 (docs/PRELOAD.md):
# the app loads its code, then calls ForkmasterPreload.serve, which turns the
# process into the preloader. It says `hello` to the master, then for each
# `spawn` double-forks a worker that the master (a child subreaper) adopts,
# and answers `spawned` or `spawn_failed`. serve returns only inside a
# worker, once the worker is set up as exec mode would have set it up; it
# returns at once when FORKMASTER_PRELOAD_FD is unset (exec mode), so the
# same app file runs both ways.
#
#   require 'forkmaster_preload'
#   app = MyApp.load                                  # the heavy part, once
#   ForkmasterPreload.after_fork { DB.reconnect }     # in each worker
#   ForkmasterPreload.serve                           # returns in a worker
#   serve_http(IO.for_fd(3))
#
# Standard library only; Ruby 3.0 or later on Linux.

require 'fiddle'
require 'json'
require 'socket'

module ForkmasterPreload
  # The protocol version this helper speaks.
  PROTOCOL_VERSION = 1
  # The largest packet either side may send.
  MAX_PACKET = 65_536
  # How long a worker waits to be adopted by the master, and how often it looks.
  REPARENT_TIMEOUT_S = 5.0
  REPARENT_POLL_S = 0.001
  # While intermediate children are pending, how long the preloader waits
  # for the next request before it looks for exited ones again.
  REAP_POLL_S = 0.002

  PRELOAD_FD_VAR = 'FORKMASTER_PRELOAD_FD'
  MASTER_PID_VAR = 'FORKMASTER_MASTER_PID'
  LISTEN_PID_VAR = 'LISTEN_PID'

  @hooks = []

  class << self
    # Registers a block to run in each worker after the fork (reconnect
    # databases, restart threads), in registration order. Returns the block.
    # Exceptions raised by a hook propagate out of serve, in the worker.
    def after_fork(&block)
      raise ArgumentError, 'ForkmasterPreload.after_fork needs a block' unless block

      @hooks << block
      block
    end

    # In exec mode (FORKMASTER_PRELOAD_FD unset) returns nil at once. In
    # preload mode never returns in the preloader: it forks workers until
    # the master closes the socket, then exits with status 0; it returns
    # true in each worker. `compact: true` runs GC.compact before the first
    # fork (Process.warmup, Ruby 3.3+, already does).
    def serve(compact: false)
      fd_text = ENV.fetch(PRELOAD_FD_VAR, '')
      return nil if fd_text.empty?

      Preloader.new(Integer(fd_text, 10), @hooks, compact: compact).run
    end
  end

  # Bad input from the master, or a step of the protocol that cannot go on.
  class ProtocolError < StandardError; end

  # Closes each IO, going on past any that fails to close.
  def self.close_all(ios)
    ios.each do |io|
      io.close unless io.closed?
    rescue IOError, SystemCallError
      nil
    end
  end

  # The preloader's loop and the worker's set-up (docs/PRELOAD.md, "In the
  # worker, before returning into the app").
  class Preloader
    PR_SET_PDEATHSIG = 1

    def initialize(fd, hooks, compact:)
      @hooks = hooks
      @compact = compact
      @master_pid = Integer(ENV.fetch(MASTER_PID_VAR, ''), 10)
      # Found once here, not in each fresh worker.
      @prctl = Fiddle::Function.new(Fiddle::Handle::DEFAULT['prctl'],
                                    [Fiddle::TYPE_INT, Fiddle::TYPE_VARIADIC], Fiddle::TYPE_INT)
      @sock = Socket.for_fd(fd)
      # Intermediate children not reaped yet. The preloader does not wait
      # for one before it takes the next request, so the forks overlap; it
      # reaps them without blocking between requests, and while any is
      # pending it waits for the socket only briefly, so none lingers as a
      # zombie.
      @pending = []
    rescue ArgumentError => e
      raise ProtocolError, "#{MASTER_PID_VAR} must be a pid: #{e.message}"
    rescue SystemCallError => e
      raise ProtocolError, "#{PRELOAD_FD_VAR}=#{fd}: #{e.message}"
    end

    # Returns only in a worker (true); exits 0 in the preloader at EOF.
    def run
      @preloader_pid = Process.pid
      warm_up
      send_message(type: 'hello', version: PROTOCOL_VERSION, pid: Process.pid,
                   runtime: "ruby #{RUBY_VERSION}")
      log('event=preload_hello', "pid=#{Process.pid}")
      loop do
        reap_pending
        next if @pending.any? && !IO.select([@sock], nil, nil, REAP_POLL_S)

        message, fds = receive
        return true if fds && handle(message, fds) == :worker
      end
    end

    private

    # Makes the heap as fork-friendly as this Ruby can before any fork.
    def warm_up
      if Process.respond_to?(:warmup)
        Process.warmup
      else
        GC.start(full_mark: true, immediate_sweep: true)
        GC.compact if @compact && GC.respond_to?(:compact)
      end
    end

    # One packet: the decoded object (or nil when it is not one) and the
    # received IOs. Exits 0 at EOF (the master is done with us).
    def receive
      data, _addr, rflags, *controls = @sock.recvmsg(MAX_PACKET + 1, 0, nil, scm_rights: true)
      fds = controls.select { |c| c.cmsg_is?(:SOCKET, :RIGHTS) }.flat_map(&:unix_rights)
      if data.nil? || (data.empty? && fds.empty?)
        log('event=preload_eof')
        reap_pending(block: true)
        exit(0)
      end
      if (rflags & Socket::MSG_TRUNC).nonzero? || data.bytesize > MAX_PACKET
        log('event=preload_message_ignored', 'reason=too_long')
        ForkmasterPreload.close_all(fds)
        return [nil, nil]
      end
      [decode(data, fds), fds]
    rescue Errno::ECONNRESET, Errno::EPIPE
      exit(0)
    end

    def decode(data, fds)
      message = JSON.parse(data)
      raise JSON::ParserError, 'not an object' unless message.is_a?(Hash)

      message
    rescue JSON::ParserError, EncodingError => e
      log('event=preload_message_ignored', "reason=#{e.class.name.tr(':', '_')}")
      ForkmasterPreload.close_all(fds)
      nil
    end

    # Acts on one message; :worker in a new worker, else nil.
    def handle(message, fds)
      return nil if message.nil?

      unless message['type'] == 'spawn'
        log('event=preload_message_ignored', "type=#{message['type'].to_s.inspect}")
        ForkmasterPreload.close_all(fds)
        return nil
      end
      spawn(message, fds)
    end

    def spawn(message, fds)
      id = message['id']
      unless id.is_a?(Integer)
        log('event=preload_message_ignored', 'reason=spawn_without_id')
        ForkmasterPreload.close_all(fds)
        return nil
      end
      env = message.fetch('env', {})
      problem = spawn_problem(env, fds)
      if problem
        ForkmasterPreload.close_all(fds)
        send_message(type: 'spawn_failed', id: id, message: problem)
        return nil
      end
      fork_worker(id, env, fds)
    end

    def spawn_problem(env, fds)
      return "expected 2 fds (stdout, stderr), got #{fds.size}" unless fds.size == 2
      unless env.is_a?(Hash) && env.all? { |k, v| k.is_a?(String) && v.is_a?(String) }
        return 'env must map strings to strings'
      end

      nil
    end

    # The double fork: the intermediate child forks the worker, reports its
    # pid and exits, so that the worker is reparented to the master.
    def fork_worker(id, env, fds)
      begin
        intermediate = Process.fork
      rescue SystemCallError => e
        ForkmasterPreload.close_all(fds)
        send_message(type: 'spawn_failed', id: id, message: "fork: #{e.message}")
        return nil
      end
      return in_intermediate(id, env, fds) if intermediate.nil?

      ForkmasterPreload.close_all(fds)
      @pending << intermediate
      nil
    end

    # Never returns in the intermediate child; returns :worker in the worker.
    def in_intermediate(id, env, fds)
      begin
        worker = Process.fork
      rescue SystemCallError => e
        report_and_exit(type: 'spawn_failed', id: id, message: "fork: #{e.message}")
      end
      return become_worker(env, fds) if worker.nil?

      report_and_exit(type: 'spawned', id: id, pid: worker)
    end

    # The intermediate child's last word: no at_exit handlers of the app run.
    def report_and_exit(**message)
      send_message(**message)
      exit!(0)
    rescue SystemCallError
      exit!(1)
    end

    # Reaps the pending intermediate children that have exited (all of
    # them when block), and forgets them.
    def reap_pending(block: false)
      flags = block ? 0 : Process::WNOHANG
      @pending.reject! do |pid|
        Process.waitpid(pid, flags)
      rescue Errno::ECHILD
        true
      end
    end

    # The worker's steps, in the protocol's order. A step that fails ends
    # the worker (status 1), as a worker that fails to exec would; the app's
    # own hooks raise into the app.
    def become_worker(env, fds)
      begin
        Process.setpgid(0, 0)
        wait_for_master
        @prctl.call(PR_SET_PDEATHSIG, Fiddle::TYPE_LONG, Signal.list.fetch('KILL'))
        exit!(1) unless Process.ppid == @master_pid
        redirect_output(fds)
        env.each { |key, value| ENV[key] = value }
        ENV[LISTEN_PID_VAR] = Process.pid.to_s
        ENV.delete(PRELOAD_FD_VAR)
        @sock.close
        Random.srand
      rescue StandardError => e
        log('event=preload_worker_failed', "error=#{e.message.inspect}")
        exit!(1)
      end
      @hooks.each(&:call)
      :worker
    end

    def wait_for_master
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + REPARENT_TIMEOUT_S
      until Process.ppid == @master_pid
        if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
          log('event=preload_worker_orphaned', "ppid=#{Process.ppid}", "master=#{@master_pid}")
          exit!(1)
        end
        sleep(REPARENT_POLL_S)
      end
    end

    # dup2 onto 1 and 2 (IO#reopen), then close the received fds.
    def redirect_output(fds)
      out, err = fds
      $stdout.flush
      $stderr.flush
      STDOUT.reopen(out)
      STDERR.reopen(err)
      ForkmasterPreload.close_all(fds)
    end

    # One packet. The master gone (EPIPE) ends the preloader as EOF does.
    def send_message(**message)
      @sock.sendmsg(JSON.generate(message))
    rescue Errno::EPIPE, Errno::ECONNRESET
      exit(0) if Process.pid == @preloader_pid
      raise
    end

    def log(*fields)
      warn(['forkmaster_preload', *fields].join(' '))
    end
  end
end
