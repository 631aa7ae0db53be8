# frozen_string_literal: true

# `gem build forkmaster_preload.gemspec` in this directory, or
# `gem 'forkmaster_preload', path: '.../contrib/preload/ruby'` in a Gemfile.
Gem::Specification.new do |spec|
  spec.name = 'forkmaster_preload'
  spec.version = '1.0.0'
  spec.summary = "forkmaster's preload helper: load the app once, fork workers from it"
  spec.description = <<~TEXT
    The Ruby side of forkmaster's preload protocol (version 1): the app loads
    its code, then ForkmasterPreload.serve forks workers on the master's
    request; in exec mode it returns at once.
  TEXT
  spec.authors = ['forkmaster']
  spec.license = 'MIT'
  spec.files = ['forkmaster_preload.rb']
  spec.require_paths = ['.']
  spec.required_ruby_version = '>= 3.0'
  spec.platform = Gem::Platform::RUBY
end
